__version__ = "0.1.0"

# Before anything imports the per-event modules: compiled or pure Python (see tunggal.native).
from tunggal import native as _native

_native.choose()
