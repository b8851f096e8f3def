"""Evaluation: PSNR/SSIM, Frechet distances on pluggable features (FD-EffLite0 offline, the FID Inception), IS,
precision/recall, reference statistics (ADM npz keys), reconstruction sweeps."""

from flexitok.eval.features import (
    EfficientNetLite0Features,
    FeatureExtractor,
    FeatureExtractorError,
    InceptionFeatures,
    build_extractor,
)
from flexitok.eval.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    inception_score,
    precision_recall,
    psnr,
    ssim,
)
from flexitok.eval.reconstruction import evaluate_reconstruction, markdown_table, write_reconstruction_report
from flexitok.eval.reference import ReferenceStats, load_reference, save_reference

__all__ = [
    "EfficientNetLite0Features",
    "FeatureExtractor",
    "FeatureExtractorError",
    "InceptionFeatures",
    "ReferenceStats",
    "build_extractor",
    "evaluate_reconstruction",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "inception_score",
    "load_reference",
    "markdown_table",
    "precision_recall",
    "psnr",
    "save_reference",
    "ssim",
    "write_reconstruction_report",
]
