"""The local web demo (``flexitok demo``): FastAPI app + a static HTML/JS page. Needs ``pip install 'flexitok[demo]'``."""

from flexitok.demo.app import DemoConfig, DemoModel, GeneratorBackend, create_app

__all__ = ["DemoConfig", "DemoModel", "GeneratorBackend", "create_app"]
