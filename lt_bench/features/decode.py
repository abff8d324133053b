"""Decoding JPEGs on the extraction device (``extract.decode: gpu``), for machines whose CPU
workers decode slower than the GPU encodes (CPU decode speed: docs/architecture.md §7).

Workers only read file bytes; the main process decodes a whole batch with torchvision's
batched ``decode_jpeg(list, device="cuda")`` (nvJPEG), then resizes, crops and normalises
on the device (:func:`tensor_transform`, the tensor twin of ``backbones/transforms.py``).
Files nvJPEG refuses are decoded on the CPU instead and counted:

- recognised from their header in the worker (not a JPEG, e.g. PNG; progressive or
  lossless/arithmetic-coded; CMYK/YCCK i.e. 4 components; 12-bit): decoded there by PIL;
- any other file the batched decode fails on: decoded alone on the device, and by PIL if
  that fails too.

Pixels differ slightly from the CPU path (IDCT, and antialiased tensor resize instead of
PIL's), so the feature files record ``decode``; every image of a run, fallbacks included,
goes through the same tensor transform. With ``decode="torchvision"`` the same path runs
on whatever device extraction uses (tests use it on the CPU).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lt_bench.features.images import ImageReadError, where_in_list

log = logging.getLogger(__name__)

_SOF_OK = (0xC0, 0xC1)  # baseline and extended sequential Huffman
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def nvjpeg_refusal(data: bytes) -> str | None:
    """Why nvJPEG would refuse these bytes ("png", "progressive", "cmyk", ...); None if fine."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] != b"\xff\xd8":
        return "not a jpeg"
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return "corrupt jpeg"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_ALL:
            if i + 10 > n:
                return "corrupt jpeg"
            if marker not in _SOF_OK:
                return "progressive" if marker in (0xC2, 0xC6, 0xCA, 0xCE) else "lossless/arithmetic"
            precision, comps = data[i + 4], data[i + 9]
            if precision != 8:
                return f"{precision}-bit"
            if comps == 4:
                return "cmyk"
            return None if comps in (1, 3) else f"{comps} components"
        if marker == 0xDA:  # start of scan before any frame header
            return "corrupt jpeg"
        i += 2 + length
    return "corrupt jpeg"


def pil_tensor(data: bytes) -> torch.Tensor:
    """An image file's bytes decoded by PIL: an RGB CHW uint8 tensor (the CPU fallback)."""
    from PIL import Image

    from lt_bench.data.images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(to_rgb(im))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class RawImageDataset(Dataset):
    """Item ``i``: ``(data, label, raw)`` where ``data`` is the file's bytes (uint8 tensor,
    ``raw=True``) or, for files nvJPEG refuses, a CPU-decoded RGB CHW uint8 tensor."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray,
                 split_file: str | Path | None = None):
        self.root, self.paths, self.labels = Path(root), paths, labels
        self.split_file = split_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        where = where_in_list(i, self.split_file)
        try:
            data = path.read_bytes()
        except OSError as e:
            what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
            raise ImageReadError(f"cannot read image {path} ({what}; {where}): "
                                 f"{type(e).__name__}: {e}") from e
        if nvjpeg_refusal(data) is None:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(self.labels[i]), True
        try:
            return pil_tensor(data), int(self.labels[i]), False
        except (OSError, ValueError) as e:
            raise ImageReadError(f"cannot read image {path} (unreadable; {where}): "
                                 f"{type(e).__name__}: {e}") from e


def collate_raw(batch):
    data, labels, raw = zip(*batch, strict=True)
    return list(data), torch.tensor(labels), list(raw)


class BatchDecoder:
    """Decode a batch of :class:`RawImageDataset` items on ``device``; counts fallbacks."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.header_fallbacks = 0  # refused by header, decoded by PIL in a worker
        self.decode_fallbacks = 0  # refused by the batched device decode
        self.images = 0

    def __call__(self, data: list[torch.Tensor], raw: list[bool]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | None] = [None] * len(data)
        todo = [i for i, r in enumerate(raw) if r]
        for i, r in enumerate(raw):
            if not r:
                out[i] = data[i].to(self.device, non_blocking=True)
        self.header_fallbacks += len(data) - len(todo)
        self.images += len(data)
        if todo:
            try:
                dec = decode_jpeg([data[i] for i in todo], mode=ImageReadMode.RGB,
                                  device=self.device)
                for i, d in zip(todo, dec, strict=True):
                    out[i] = d
            except RuntimeError:  # one bad file fails the batch: retry one by one
                for i in todo:
                    try:
                        out[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        self.decode_fallbacks += 1
                        out[i] = pil_tensor(data[i].numpy().tobytes()).to(self.device)
        return out  # type: ignore[return-value]

    def stats(self) -> dict:
        return {"images": self.images, "cpu_fallbacks": self.header_fallbacks
                + self.decode_fallbacks, "refused_by_header": self.header_fallbacks,
                "refused_by_decoder": self.decode_fallbacks}


def tensor_transform(kind: str, size: int, mean, std, interpolation: str | None = None,
                     expand: int = 24):
    """The device twin of ``lift_test_transform`` / ``five_crop_transform``.

    ``kind``: ``lift`` / ``open_clip`` -> (3, S, S); ``fivecrop`` -> (5, 3, S, S) (crops in
    torchvision's order). Input: one RGB CHW uint8 tensor.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from lt_bench.backbones.transforms import TransformError

    if kind not in ("lift", "open_clip", "fivecrop"):
        raise TransformError(f"unknown device transform {kind!r}; valid: lift, open_clip, "
                             "fivecrop")
    interp = InterpolationMode(interpolation or ("bicubic" if kind == "open_clip"
                                                 else "bilinear"))
    resize = {"lift": size * 8 // 7, "open_clip": size, "fivecrop": size + expand}[kind]
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def apply(img: torch.Tensor) -> torch.Tensor:
        img = TF.resize(img, [resize], interpolation=interp, antialias=True)
        crops = TF.five_crop(img, [size, size]) if kind == "fivecrop" else [
            TF.center_crop(img, [size, size])]
        x = torch.stack(crops).float().div_(255)
        x = (x - m.to(x.device)) / s.to(x.device)
        return x if kind == "fivecrop" else x[0]

    return apply
