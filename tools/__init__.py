"""The course's machinery, kept out of the learner's library (``utils``).

What the ``make`` targets run, not what the notebooks teach:

- ``tools.course`` (``make course``): every notebook headless, with ``tools.notebook_runner``
  (fresh kernel, per-cell limits, progress, Ctrl-C) and ``tools.course_state`` (the stage cache);
- ``tools.readme_times`` (``make readme-times``): README.md's time table from the measured runs;
- ``tools.colab_links`` (``make colab-links``): every Colab badge and cell pointed at a fork;
- ``tools.gpu_smoke`` (``make gpu-smoke``): every notebook on a CUDA GPU at ci sizes;
- ``tools.chat`` (``make chat``): talk to a chat model in the terminal.

``tools`` may import ``utils``; ``utils`` never imports ``tools`` (``tests/test_layout.py``), so
the stage cache can leave ``tools/`` out: editing the machinery reruns no notebook.
"""
