"""What lt-bench pins of LIFT's ``datasets/`` folder (docs/architecture.md §6): the commit,
each file's checksums, each split's known statistics, and the image layouts the datasets
of :mod:`lt_bench.data.lift` expect. Constants only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

LIFT_COMMIT = "661ead9b78368f05ba79abe4672d63154467f823"
LIFT_BASE_URL = f"https://raw.githubusercontent.com/shijxcs/LIFT/{LIFT_COMMIT}/datasets"


@dataclass(frozen=True)
class SourceFile:
    """A file of LIFT's ``datasets/`` folder with its pinned checksums (docs/architecture.md §6)."""

    relpath: str
    git_blob: str
    sha256: str | None = None

    @property
    def known_hash(self) -> str:
        # sha256 where docs/architecture.md §6 pins one; otherwise the git blob id, which pins it as well
        return f"sha256:{self.sha256}" if self.sha256 else f"gitblob:{self.git_blob}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.relpath).name


# --------------------------------------------------------------------- pinned constants

IMAGENET_LT_SOURCES = {
    "train": SourceFile("ImageNet_LT/ImageNet_LT_train.txt",
                        "a063f095fcd475db4cf8b0658c4b73955535bbf9"),
    "val": SourceFile("ImageNet_LT/ImageNet_LT_val.txt",
                      "3ed3188b2f44829ce2dec1cc27040d8d40984088",
                      "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e"),
    "test": SourceFile("ImageNet_LT/ImageNet_LT_test.txt",
                       "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
                       "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5"),
    "classnames": SourceFile("ImageNet_LT/classnames.txt",
                             "91710b143a9ea19996f66d1b92af859f99e96e8e",
                             "89e0b642c6697a3a43a06a2bb65f9fefb3ca295ccc5f4ba9ce385f1a3a58c629"),
}
IMAGENET_LT_STATS = {
    "train": {"n_images": 115_846, "n_classes": 1000, "max_count": 1280, "min_count": 5},
    "val": {"n_images": 20_000, "n_classes": 1000, "max_count": 20, "min_count": 20},
    "test": {"n_images": 50_000, "n_classes": 1000, "max_count": 50, "min_count": 50},
}

PLACES_LT_SOURCES = {
    "train": SourceFile("Places_LT/Places_LT_train.txt",
                        "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636",
                        "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7"),
    "val": SourceFile("Places_LT/Places_LT_val.txt",
                      "b93a2ca58ccb7f3b671c176f395a70bf52c95533",
                      "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba"),
    "test": SourceFile("Places_LT/Places_LT_test.txt",
                       "e732e58b8aa718a2c1c11933375f5710652c2b93",
                       "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc"),
    "classnames": SourceFile("Places_LT/classnames.txt",
                             "f2d229cdfdab6b888fcbc0f1ecbd78a06ee5fd27",
                             "bee03ea5431ad49d156f159d24961f8c2787d3b7ac853b962c9cf256cafe50d1"),
}
# docs/architecture.md §6 gives only sizes for Places-LT val/test; class coverage follows from them
PLACES_LT_STATS = {
    "train": {"n_images": 62_500, "n_classes": 365, "max_count": 4980, "min_count": 5},
    "val": {"n_images": 7_300, "n_classes": 365},
    "test": {"n_images": 36_500, "n_classes": 365},
}

INAT2018_SOURCES = {
    "train": SourceFile("iNaturalist18/iNaturalist18_train.txt",
                        "4accdb7584d2f0a5106c40a33ed6afa392189bcc"),
    # the official val list: our *test* split
    "val": SourceFile("iNaturalist18/iNaturalist18_val.txt",
                      "4c23900857fd0f5adcd4cc0dffef345039eeb05f",
                      "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3"),
    "categories": SourceFile("iNaturalist18/categories.json",
                             "5804f413dc401661710ea810d7bcd3abf4c632e2",
                             "9c7adca5cafad83bc015e21dc773580769ef641543c412708a08fd81ea99ceb0"),
}
INAT2018_STATS = {
    "train": {"n_images": 437_513, "n_classes": 8142},
    "val": {"n_images": 24_426, "n_classes": 8142, "max_count": 3, "min_count": 3},
}


IMAGENET_LAYOUT = """\
ImageNet-LT uses the ILSVRC-2012 (ImageNet-1k) images, which lt-bench never downloads
(licence): request access and download them at https://image-net.org/download.php.
data_root must be the ILSVRC-2012 root, with the val images sorted into class folders
(e.g. with the usual valprep.sh):
  <data_root>/train/n01440764/n01440764_10026.JPEG   (1000 class folders)
  <data_root>/val/n01440764/ILSVRC2012_val_00000293.JPEG"""

PLACES_LAYOUT = """\
Places-LT uses Places365-Standard in the "easy directory structure"
(places365standard_easyformat.tar, from http://places2.csail.mit.edu/download.html, or
set download_images: true). data_root must be its places365_standard folder (the folder that
contains places365_standard/ works too):
  <data_root>/train/airfield/00000001.jpg
  <data_root>/val/airfield/Places365_val_00000435.jpg"""

INAT_LAYOUT = """\
iNaturalist 2018 uses train_val2018.tar.gz (120 GB; from
https://github.com/visipedia/inat_comp/tree/master/2018, or set download_images: true).
data_root must be the folder that contains train_val2018/:
  <data_root>/train_val2018/Actinopterygii/2229/2c5596da5091695e44b5604c2a53c477.jpg"""
