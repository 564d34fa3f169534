from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deadpool-executor")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
