"""medclassify: reproducible training and evaluation of medical image classifiers."""

__version__ = "0.1.0"
