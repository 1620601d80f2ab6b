"""The model package: the bottom layer a model server stands on.

    from backline.package import load_package
    scorer = load_package(Path("out/fraud-v3"))   # verifies every file's sha256 first
    probs = scorer.score(table)                   # float32 [N], from the raw feature columns

What is here, and what a server imports:
    reader       the manifest (package.json) and its verification, `load_package`, `Scorer`
    preprocess   the preprocessing math (`Preprocessor`), the same for training and serving
    metrics      AUC-PR, recall at a false-positive rate and the other holdout metrics
    device       fixed batch sizes (buckets) and CUDA graphs: `load_package(root, device="cuda",
                 buckets=power_of_two_buckets(256))`, then `scorer.warm()` before serving

and beside it, for whoever writes packages (a server never needs them):
    export       `package(...)`: writes a folder and measures it (parity, latency, int8 rule)
    latency      timing a package the way a server worker scores one request

This layer imports only `backline.core`, numpy, pyarrow and torch (onnxruntime when an ONNX
variant is loaded). It never imports SQLAlchemy, DuckDB, pyspark, the registry, the feature
store or training; tests/package/test_lean_import.py holds it to that in a fresh interpreter.
A package whose files do not match package.json, or cannot be read, raises `IntegrityError`.
See docs/serving-artifact.md.
"""

from backline.package.device import DEVICES, power_of_two_buckets
from backline.package.preprocess import NumericStats, Preprocessor, Vocabulary
from backline.package.reader import (
    MANIFEST_FILE,
    VARIANTS,
    Latency,
    PackageFile,
    Scorer,
    ServingPackage,
    VariantReport,
    load_package,
    read_package,
)

__all__ = [
    "DEVICES",
    "MANIFEST_FILE",
    "VARIANTS",
    "Latency",
    "NumericStats",
    "PackageFile",
    "Preprocessor",
    "Scorer",
    "ServingPackage",
    "VariantReport",
    "Vocabulary",
    "load_package",
    "power_of_two_buckets",
    "read_package",
]
