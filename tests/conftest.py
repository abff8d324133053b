"""Shared fixtures. Every test runs offline (HF_HUB_OFFLINE) on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

from lt_bench.workflow_copy import copy_workflow  # noqa: E402,F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]

#: A small but meaningful toy world: 30 classes, one toy CLIP pre-trained for ~1-3 min.
SMALL_TOY = {"num_classes": 30, "max_per_class": 200, "imbalance": 50, "val_per_class": 10,
             "test_per_class": 30, "image_size": 32, "seed": 0}
SMALL_PRETRAIN = {"num_pairs": 8000, "epochs": 3, "batch_size": 128, "eval_per_class": 40}


@pytest.fixture(scope="session")
def small_toy_world(tmp_path_factory):
    """Toy dataset + toyclip0 pre-trained on it + its extracted features.

    Returns a dict of paths: ``split_dir``, ``backbone_dir`` (checkpoint.pt, prior.parquet,
    pretrain.json) and ``features_dir`` ({train,val,test,text}.parquet).
    """
    import torch

    from lt_bench.data import get_dataset
    from lt_bench.features.extract import extract_all
    from lt_bench.pretrain import pretrain_toy_clip

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("small_toy")
    split_dir = root / "data" / "toy"
    ds = get_dataset("toy", **SMALL_TOY)
    ds.prepare(split_dir)
    backbone_dir = root / "backbones" / "toyclip0"
    pretrain_toy_clip(backbone_dir, num_classes=SMALL_TOY["num_classes"], index=0,
                      **SMALL_PRETRAIN)
    features_dir = root / "features" / "toy" / "toyclip0"
    extract_all("toy", split_dir, split_dir, "toyclip0", features_dir,
                checkpoint=backbone_dir / "checkpoint.pt", batch_size=128, num_workers=0,
                device="cpu")
    return {"root": root, "split_dir": split_dir, "backbone_dir": backbone_dir,
            "features_dir": features_dir}




@pytest.fixture(scope="module")
def toy_clip():
    """A random-weight toy CLIP (the toy CLIPs' open_clip config), for model-code tests."""
    import open_clip
    import torch

    from lt_bench.backbones.catalog import TOY_MODEL
    from lt_bench.backbones.spec import ensure_model_configs

    torch.set_num_threads(1)
    ensure_model_configs()
    torch.manual_seed(0)
    return open_clip.create_model(TOY_MODEL).eval()


# --- the local one-node SLURM cluster (scripts/slurm-cluster.sh) ---------------------------

SLURM_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
SLURM_START_TIMEOUT_S = 900  # apt-get install (+ update) on a fresh machine, then the start


def save_random_toy_checkpoint(path: Path) -> Path:
    """A user's checkpoint as they would have it: the small open_clip toy architecture
    (lt-toy-vit-p8) with random weights (seed 0), saved as a state dict at ``path``."""
    import open_clip
    import torch

    from lt_bench.backbones.spec import ensure_model_configs

    ensure_model_configs()
    torch.manual_seed(0)
    torch.save(open_clip.create_model("lt-toy-vit-p8").state_dict(), path)
    return path


def _slurm_lab_conf() -> Path:
    lab = Path(os.environ.get("SLURM_LAB_DIR", "/tmp/lt-bench-slurm"))
    return lab / "etc" / "slurm.conf"


def _slurm_cluster_usable() -> bool:
    try:
        r = subprocess.run([str(SLURM_SCRIPT), "status"], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """A usable one-node SLURM cluster for the ``slurm`` tests; yields its slurm.conf.

    Uses a running one (``scripts/slurm-cluster.sh status``), else starts one with
    ``scripts/slurm-cluster.sh start`` (which installs Debian's slurmctld, slurmd,
    slurm-client and munge with apt-get when missing) and stops it at the end of the
    session. Skips, saying why, only where SLURM cannot be installed or started: not root,
    or SLURM missing with no apt-get (or apt-get unable to install it). Any other failure to
    start is an error. SLURM_CONF points the tests' and Snakemake's sbatch/squeue at it.
    """
    started = False
    if not _slurm_cluster_usable():
        if os.geteuid() != 0:
            pytest.skip("SLURM tests need root to start the local cluster "
                        "(apt-get, mknod, munged); run scripts/slurm-cluster.sh start as root")
        installed = shutil.which("slurmctld") is not None and shutil.which("sbatch") is not None
        if not installed and shutil.which("apt-get") is None:
            pytest.skip("SLURM is not installed and there is no apt-get to install it "
                        "(Debian packages slurmctld slurmd slurm-client munge)")
        r = subprocess.run([str(SLURM_SCRIPT), "start"], capture_output=True, text=True,
                           timeout=SLURM_START_TIMEOUT_S)
        if r.returncode != 0:
            if not installed and "apt-get install failed" in r.stderr:
                pytest.skip(f"could not install SLURM with apt-get:\n{r.stderr[-2000:]}")
            pytest.fail(f"scripts/slurm-cluster.sh start failed:\n{r.stderr[-4000:]}")
        started = True
    conf = _slurm_lab_conf()
    with pytest.MonkeyPatch.context() as mp:
        if conf.exists():
            mp.setenv("SLURM_CONF", str(conf))
        yield conf
    if started:
        subprocess.run([str(SLURM_SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


# --- a local PostgreSQL server (scripts/postgres-server.sh), for the lab tracking server ----

POSTGRES_SCRIPT = REPO / "scripts" / "postgres-server.sh"
POSTGRES_START_TIMEOUT_S = 900  # apt-get install (+ update) on a fresh machine, then initdb


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL on 127.0.0.1 with a role and database ``mlflow``; yields its URI.

    Started by ``scripts/postgres-server.sh start`` in a fresh folder on a free port (it
    installs Debian's postgresql with apt-get when missing, as the SLURM fixture does) and
    stopped at the end of the session. Skips, saying why, only where PostgreSQL cannot be
    installed or started: not root, or no PostgreSQL and no apt-get (or apt-get failing).
    """
    import socket

    if os.geteuid() != 0:
        pytest.skip("the PostgreSQL fixture needs root (apt-get; the server runs as postgres); "
                    "run scripts/postgres-server.sh start as root")
    installed = any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not installed and shutil.which("apt-get") is None:
        pytest.skip("PostgreSQL is not installed and there is no apt-get to install it "
                    "(Debian package postgresql)")
    import tempfile

    # not below pytest's tmp folders: they are 0700 root, and the server runs as postgres
    lab = Path(tempfile.mkdtemp(prefix="lt-bench-postgres-"))
    lab.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "POSTGRES_LAB_DIR": str(lab), "POSTGRES_LAB_PORT": str(port)}
    r = subprocess.run([str(POSTGRES_SCRIPT), "start"], capture_output=True, text=True,
                       env=env, timeout=POSTGRES_START_TIMEOUT_S)
    if r.returncode != 0:
        if not installed and "apt-get install failed" in r.stderr:
            pytest.skip(f"could not install PostgreSQL with apt-get:\n{r.stderr[-2000:]}")
        pytest.fail(f"scripts/postgres-server.sh start failed:\n{r.stderr[-4000:]}")
    uri = subprocess.run([str(POSTGRES_SCRIPT), "uri"], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    try:
        yield uri
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop"], capture_output=True, text=True, env=env,
                       timeout=120)
        shutil.rmtree(lab, ignore_errors=True)
