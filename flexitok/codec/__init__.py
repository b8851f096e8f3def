"""Token codecs: compact ``.ftok`` files, adaptive token budgets (smallest k for a quality target) and their
report, and the token-list files of ``flexitok tokenize`` / ``detokenize`` (JSON, ``.npy``)."""

from flexitok.codec.adaptive import AdaptiveResult, QualityTarget, bisect_k, build_scorer, decode_tokens, search_k
from flexitok.codec.ftok import FtokError, FtokFile, model_fingerprint, read_ftok, write_ftok
from flexitok.codec.report import ReportRow, render_report, write_report
from flexitok.codec.token_files import TokenFile, read_token_file, validate_tokens, write_token_file

__all__ = [
    "AdaptiveResult",
    "FtokError",
    "FtokFile",
    "QualityTarget",
    "ReportRow",
    "TokenFile",
    "bisect_k",
    "build_scorer",
    "decode_tokens",
    "model_fingerprint",
    "read_ftok",
    "read_token_file",
    "render_report",
    "search_k",
    "validate_tokens",
    "write_ftok",
    "write_report",
    "write_token_file",
]
