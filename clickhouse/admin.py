"""Moved to :mod:`eventpipe.admin` (the processors serve the same endpoint); kept for old imports."""

from eventpipe.admin import build_admin_app

__all__ = ["build_admin_app"]
