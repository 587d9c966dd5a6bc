"""The course's shared package: every notebook imports what it builds from here.

Submodules are imported on use (``from utils import cleaning``) so that
``import utils`` stays instant and needs nothing heavy.
"""

from utils import config, report

__all__ = ["config", "report"]
