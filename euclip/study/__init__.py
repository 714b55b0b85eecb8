"""The paper's study as one command: a grid of runs (:mod:`~euclip.study.grid`, :mod:`~euclip.study.sweep`),
their results over seeds (:mod:`~euclip.study.results`), the paper's claims tested (:mod:`~euclip.study.claims`)
and a results page (:mod:`~euclip.study.page`)."""
