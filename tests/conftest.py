"""Suite-wide settings: under CI (CI=true) hypothesis runs derandomized so a landing is never
decided by which random examples a run happened to draw; locally it explores new examples."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
