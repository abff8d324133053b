"""The SLURM profile and tracking store checks."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from lt_bench.doctor.check import FAIL, OK, WARN, Check
from lt_bench.doctor.check import read_yaml as _yaml

# --- SLURM ----------------------------------------------------------------------------------

def _profile_resources(profile: Path) -> tuple[set[str], set[str], bool]:
    cfg = _yaml(profile / "config.yaml")
    blocks = [cfg.get("default-resources") or {}, *(cfg.get("set-resources") or {}).values()]
    parts, accounts, gpus = set(), set(), False
    for b in blocks:
        if isinstance(b, list):  # `- key=value` form
            b = dict(str(x).split("=", 1) for x in b if "=" in str(x))
        parts |= {str(b["slurm_partition"]).strip("'\"")} if b.get("slurm_partition") else set()
        accounts |= {str(b["slurm_account"]).strip("'\"")} if b.get("slurm_account") else set()
        gpus = gpus or bool(b.get("gpu")) or "gpu" in str(b.get("gres", ""))
    return {os.path.expandvars(p) for p in parts}, {os.path.expandvars(a) for a in accounts}, gpus


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def check_slurm(profile: Path) -> list[Check]:
    cfg_file = profile / "config.yaml"
    if not cfg_file.is_file():
        return [Check("slurm", str(profile), FAIL, f"{cfg_file} not found",
                      "--profile names a folder with a Snakemake profile config.yaml")]
    if _yaml(cfg_file).get("executor") != "slurm":
        return []
    if shutil.which("sinfo") is None:
        return [Check("slurm", "sinfo", FAIL, "the profile uses SLURM but sinfo is not on PATH",
                      "run doctor on the cluster's login node")]
    parts, accounts, gpus = _profile_resources(profile)
    out: list[Check] = []
    listed = _run(["sinfo", "-h", "-o", "%R"])
    if listed is None:
        return [Check("slurm", "sinfo", FAIL, "sinfo failed (is slurmctld reachable?)",
                      "check `sinfo` by hand")]
    have = set(listed.split())
    for p in sorted(parts):
        if "$" in p:
            out.append(Check("slurm", f"partition {p}", FAIL, "an unset environment variable",
                             f"export {p.strip('${}')} or edit {cfg_file}"))
        elif p not in have:
            out.append(Check("slurm", f"partition {p}", FAIL,
                             f"not a partition here (have: {', '.join(sorted(have))})",
                             f"set slurm_partition in {cfg_file}"))
        else:
            out.append(Check("slurm", f"partition {p}", OK, "exists"))
    if not parts:
        out.append(Check("slurm", "partition", OK,
                         f"the cluster's default ({', '.join(sorted(have))})"))
    if accounts and shutil.which("sacctmgr"):
        assoc = _run(["sacctmgr", "-n", "-P", "show", "assoc", "format=account"]) or ""
        known = {a.strip() for a in assoc.split()}
        for a in sorted(accounts):
            status = OK if a in known else FAIL
            out.append(Check("slurm", f"account {a}", status,
                             "exists" if status == OK else "not an account of the cluster",
                             "" if status == OK else f"set slurm_account in {cfg_file}"))
    if gpus:
        gres = _run(["sinfo", "-h", "-o", "%G"]) or ""
        status = OK if "gpu" in gres else FAIL
        out.append(Check("slurm", "GPU gres", status,
                         f"nodes offer {gres.split()[0] if gres.split() else 'no gres'}",
                         "" if status == OK else "the profile asks for GPUs the cluster does "
                         "not offer: set a GPU partition"))
    return out


# --- tracking -------------------------------------------------------------------------------

def check_tracking(uri: str) -> list[Check]:
    from lt_bench.tracking.records import sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            return [Check("tracking", uri, FAIL, f"{probe} is not writable",
                          "make results/mlflow writable or set MLFLOW_TRACKING_URI")]
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                con.execute("BEGIN IMMEDIATE")  # takes the write lock, then gives it back
                con.rollback()
                con.close()
            except sqlite3.Error as e:
                return [Check("tracking", uri, FAIL, f"{db}: {e}",
                              "another process holds the store, or the file is damaged")]
        return [Check("tracking", uri, OK, "writable" + ("" if db.exists() else
                                                         " (created by the first ingest)"))]
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                ok = r.status == 200
        except (urllib.error.URLError, OSError) as e:
            return [Check("tracking", uri, FAIL, f"not reachable ({e})",
                          "start the server or fix MLFLOW_TRACKING_URI; runs are kept in "
                          "results/ and can be ingested later")]
        return [Check("tracking", uri, OK if ok else FAIL, "server answers /health")]
    return [Check("tracking", uri, WARN, "not checked (neither sqlite:/// nor http(s)://)")]


