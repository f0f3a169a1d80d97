"""resflow-fast: fast ResFlow image restoration (Triton kernels over a plain-PyTorch reference).

`kernels/` and `reference/` live at the top of the repository but install as the subpackages
`resflow_fast.kernels` and `resflow_fast.reference`, so nothing with a generic name lands in
site-packages.
"""
from setuptools import setup

setup(
    name="resflow-fast",
    version="0.1.0",
    description="ResFlow (Reversing Flow for Image Restoration, CVPR 2025) with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["resflow_fast", "resflow_fast.evaluation", "resflow_fast.reference", "resflow_fast.kernels",
              "resflow_fast.benchmarks"],
    package_dir={
        "resflow_fast": "resflow_fast",
        "resflow_fast.reference": "reference",
        "resflow_fast.kernels": "kernels",
        "resflow_fast.benchmarks": "benchmarks",
    },
    package_data={"resflow_fast": ["models/*.safetensors", "models/*.json"]},
    install_requires=[
        "torch>=2.4",
        'triton>=3.0; platform_system == "Linux"',  # elsewhere the pure-torch twins run
        "numpy>=1.24",
        "pillow>=10.0",
        "tifffile>=2023.1",  # 16-bit colour TIFF, which Pillow decodes to 8 bits
        "pypng>=0.20220715",  # 16-bit colour PNG, likewise
        "safetensors>=0.4",
        "tqdm>=4.60",
        "nvidia-ml-py>=12.0",
    ],
    extras_require={
        "test": ["pytest>=7.0", "pytest-benchmark>=4.0", "scikit-image>=0.21"],
        # `resflow eval`'s classical baselines; never needed at run time (bm3d's licence is non-commercial)
        "eval": ["scikit-image>=0.21", "PyWavelets>=1.4", "opencv-python-headless>=4.8", "bm3d>=4.0"],
    },
    entry_points={"console_scripts": ["resflow = resflow_fast.cli:main"]},
)
