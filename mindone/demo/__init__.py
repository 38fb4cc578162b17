"""The demo's reusable parts, importable wherever mindone is installed.

- :mod:`mindone.demo.scenes`: the embedded sample: captioned scenes (a coloured shape on a coloured
  background) and the LAION-format metadata whose URLs name them;
- :mod:`mindone.demo.prompt_score`: does a generated image show what its prompt names (centre colour,
  border colour, shape)?

The demo itself (which stages run, with which recipe) is the script ``examples/demo/run_demo.py``.
"""
