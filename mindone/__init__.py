"""mindone: Stable Diffusion 2.x in MindSpore, from LAION metadata to trained models.

Importing the package is cheap: subpackages load MindSpore only when they need it, so the data
tools can use ``mindone.utils`` without starting the framework.
"""

__version__ = "0.1.0"
