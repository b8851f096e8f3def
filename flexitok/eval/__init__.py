"""Evaluation: PSNR/SSIM, Frechet distances on pluggable features (FD-EffLite0 offline), reconstruction sweeps."""

from flexitok.eval.features import EfficientNetLite0Features, FeatureExtractor, FeatureExtractorError, build_extractor
from flexitok.eval.metrics import frechet_distance, frechet_distance_from_stats, gaussian_stats, psnr, ssim
from flexitok.eval.reconstruction import evaluate_reconstruction, markdown_table, write_reconstruction_report

__all__ = [
    "EfficientNetLite0Features",
    "FeatureExtractor",
    "FeatureExtractorError",
    "build_extractor",
    "evaluate_reconstruction",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "markdown_table",
    "psnr",
    "ssim",
    "write_reconstruction_report",
]
