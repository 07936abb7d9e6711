"""Tooling around the library: speed measurements against the memory-traffic
floor and the autodiff peers, the layer demo and the NumPy closed form.

Nothing here is imported by :mod:`numbabn` itself.

* :mod:`.timing` — wall-clock medians and the streaming bandwidth (the floor);
* :mod:`.cases` — the benchmark shapes, inputs, floors and one numbabn call per operation;
* :mod:`.peers` — the same derivatives with NumPy, autograd, PyTorch and JAX;
* :mod:`.network` — an exact network HVP, numbabn.hf against PyTorch;
* :mod:`.cpu`, :mod:`.cuda` — the tables of ``python -m numbabn bench [--backend cuda]``;
* :mod:`.report` — the one table printer (terminal and Markdown);
* :mod:`.closed_form`, :mod:`.demo` — the readable NumPy baseline and the layer demo.
"""
