"""csttool-nipype: corticospinal tract assessment from diffusion MRI on Nipype."""

import os
from importlib.metadata import PackageNotFoundError, version

# Nipype asks a web service for its latest version at import unless this is set;
# this package never touches the network.
os.environ.setdefault("NIPYPE_NO_ET", "1")

try:
    __version__ = version("csttool-nipype")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
