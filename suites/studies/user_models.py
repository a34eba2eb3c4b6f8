"""Write the two user-supplied models the factory study's ``student`` and ``byo`` variants read.

    python suites/studies/user_models.py

``import_student`` and ``bring_your_own`` take a file the user made, so the study needs one of
each: this copies the study's own distilled student (``distilled``, trained by the distill
recipe) to ``user_models/student.onnx`` as "a student you trained", and its int8 build to
``user_models/byo.onnx`` as "an ONNX file you exported yourself". Both are built first if the
cache lacks them. ``user_models/`` is not committed; without it those two variants fail with an
error naming the missing file, and the others run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgegate.suites import load_suite
from edgegate.variants.factory import VariantFactory

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite_smollm2_factory.yaml"
COPIES = {"distilled": "student.onnx", "int8": "byo.onnx"}


def main() -> None:
    suite = load_suite(SUITE)
    cache = Path(os.environ.get("EDGEGATE_CACHE_DIR") or Path.home() / ".cache" / "edgegate")
    factory = VariantFactory(suite, cache, log=print)
    target = HERE / "user_models"
    target.mkdir(exist_ok=True)
    for variant, file_name in COPIES.items():
        artifact = factory.artifact(suite.variant(variant))
        shutil.copy2(artifact.model, target / file_name)
        print(f"{variant} ({artifact.folder.name}) -> {target / file_name}")
    shutil.copy2(factory.artifact(suite.variant("fp32")).tokenizer, target / "tokenizer.json")


if __name__ == "__main__":
    main()
