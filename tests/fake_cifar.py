"""A tiny CIFAR-10 archive laid out like the shared one, for tests of the data built from CIFAR-10."""
import tarfile
from pathlib import Path

from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: the blue channel of every image of a split (the split is told by it)
SPLIT_BLUE = {"train": 40, "test": 215}


def fake_cifar10_archive(folder: Path, per_class=(("train", 3), ("test", 2))) -> Path:
    """``folder/cifar10-jpeg.tar.gz`` holding ``cifar10-jpeg/{train,test}/<class>/<nnnn>.jpg``: 32 px flat-colour
    JPEGs, R = 20 * class + 10, G = 60 + 60 * index, B = :data:`SPLIT_BLUE` of the split."""
    root = Path(folder) / "cifar10-jpeg"
    for split, n in per_class:
        for c, name in enumerate(CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                colour = (20 * c + 10, (60 + 60 * i) % 256, SPLIT_BLUE[split])
                Image.new("RGB", (32, 32), colour).save(root / split / name / f"{i:04d}.jpg", quality=95)
    archive = Path(folder) / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="cifar10-jpeg")
    return archive
