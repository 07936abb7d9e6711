"""One call of a public function: validation, layout, and the reduce -> coefficients
-> apply pipeline that every operation runs (docs/design.md §4).

Every operation is described by an :class:`Op`: which pipeline slot each of
its array arguments fills. A call whose arguments pass the checks leaves a
:class:`Plan` behind, keyed on everything the checks looked at (the operation,
the array type, dtype and shapes, the channel axis, ``config.version``). A later
call with the same key, no ``out``, ``eps``, ``axis`` or ``comm`` and
statistics made by numbabn (or none) would pass the same checks, so it runs
the plan at once: that keeps the fixed cost of a call on a small batch to a
few microseconds. Every other call takes :class:`Call`'s checks, which raise
the errors that name the culprit.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import config
from ._arrays import array_kind
from ._dispatch import select_backend
from ._layout import canonical_dims
from ._sharding import check_comm, reduce_moment_sums
from ._validation import call_dtype, dtype_of, normalize_axis, normalize_eps, require_shape
from .kernels import formulas as f
from .stats import BatchStats, canonical_batch, stats_of_canonical

DEFAULT_EPS = 1e-5
DEFAULT_AXIS = 1

#: The pipeline slots an array argument can fill: x-shaped fields (dz, h), direction
#: arrays (u, w: x.shape or (V, *x.shape)) and per-channel tangents (ug, ub).
DZ, H, U, W, UG, UB = range(6)
_FIELDS, _DIRECTIONS = (DZ, H), (U, W)


class Op(NamedTuple):
    """An operation as the pipeline runs it.

    Attributes
    ----------
    args : tuple of str
        The names of its array arguments after x and gamma, in the order they
        are checked (directions before the per-channel tangents).
    slots : tuple of int
        The slot (``DZ``, ``H``, ``U``, ``W``, ``UG``, ``UB``) each argument fills.
    optional : tuple of str
        The arguments that may be None.
    terms : int
        The ``formulas.TERM_*`` flags it adds up ...
    optional_terms : tuple of int
        ... and those each optional argument adds when it is given.
    params : bool
        Whether it returns the gamma and beta outputs.
    """

    args: tuple[str, ...]
    slots: tuple[int, ...]
    optional: tuple[str, ...]
    terms: int
    optional_terms: tuple[int, ...]
    params: bool


JVP = Op(("u", "u_gamma", "u_beta"), (U, UG, UB), ("u_gamma", "u_beta"),
         f.TERM_PROJ_U, (f.TERM_PARAM, f.TERM_PARAM), False)  # fmt: skip
VJP = Op(("dz",), (W,), (), f.TERM_PROJ_W, (), True)
RVP = Op(("dz", "u"), (DZ, U), (), f.TERM_RVP, (), False)
GGNVP = Op(("u", "hz"), (U, H), (), f.TERM_CURV, (), False)
HVP = Op(("dz", "u", "hz"), (DZ, U, H), (), f.TERM_RVP | f.TERM_CURV, (), False)
#: An absent dz_dot is zero: its array is neither read nor made.
ROP_BACKWARD = Op(("dz", "u", "dz_dot", "u_gamma"), (DZ, U, W, UG), ("dz_dot", "u_gamma"),
                  f.TERM_RVP, (f.TERM_PROJ_W, f.TERM_UG_PROJ_DZ), True)  # fmt: skip
#: jvp and rop_backward on the same directions (:func:`vjp_backward`); the terms and
#: slots of its rop_backward, whose sums include the jvp's.
VJP_BACKWARD = Op(("dz", "a", "a_gamma", "a_beta"), (DZ, U, UG, UB), ("a_gamma", "a_beta"),
                  f.TERM_RVP, (f.TERM_UG_PROJ_DZ, 0), True)  # fmt: skip
#: The forward pass: beta is the tangent of beta, gamma that of gamma.
FORWARD = Op(("beta",), (UB,), (), f.TERM_PARAM, (), False)


class Plan(NamedTuple):
    """What a checked call leaves for the next call with the same key."""

    be: Any
    dims: tuple[int, int, int]
    x_shape: tuple[int, ...]  # x in the backend's kernel layout
    #: (argument, slot, kernel-layout shape) of each argument present; the shape is
    #: None for a per-channel tangent.
    convert: tuple[tuple[int, int, Any], ...]
    n_dir: int
    batched: bool
    result_shape: tuple[int, ...]
    bplan: Any  # the backend's own plan: kernels, tiling, launch configurations


#: Plans by key; cleared when it grows past ``_MAX_PLANS`` (a few shapes per model).
_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 4096


def execute(op: Op, x, gamma, stats, args: tuple, eps=None, axis=None, backend="auto",
            comm=None, out=None):  # fmt: skip
    """Run ``op``; returns the result, or ``(result, gamma output, beta output)``
    when the operation has parameter outputs."""
    plan = _remembered(op, x, gamma, stats, args, eps, axis, backend, comm, out)
    if plan is not None:
        return _run_plan(op, plan, x, gamma, stats, args)
    return _checked(op, x, gamma, stats, args, eps, axis, backend, comm, out)


def _remembered(op: Op, x, gamma, stats, args: tuple, eps, axis, backend, comm, out):
    """The plan a call may run without the checks (one that passed them had the
    same key), or None."""
    if out is None and comm is None and eps is None and axis is None and backend == "auto":
        key = _key(op, x, gamma, stats, args, DEFAULT_AXIS)
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None and (stats is None or stats._prepared[0] is plan.be):
            return plan
    return None


def forward(x, gamma, beta, eps, axis, backend, comm, out):
    """``gamma * xhat + beta`` and the statistics of x; see :func:`numbabn.forward`."""
    if (out is None and comm is None and backend == "auto" and type(axis) is int
            and type(eps) is float and 0.0 <= eps < math.inf):  # fmt: skip
        key = _key(FORWARD, x, gamma, None, (beta,), axis)
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None:
            be = plan.be
            x3 = be.view(x, plan.x_shape)
            ub = be.channel_rows(beta, 1)
            ug = be.channel_rows(gamma, 1)
            stats, coef = stats_of_canonical(be, x, x3, plan.dims, eps, axis % x.ndim, None,
                                             (ug, ub))  # fmt: skip
            res = _forward_apply(plan, x3, stats, gamma, ug, ub, coef, None)
            return be.wrap(res.reshape(plan.result_shape), x), stats
    call = Call(x, gamma, None, eps, axis, backend, {"beta": beta}, comm=comm)
    dst = call.output(out, 1, False)
    ub = call.channel_tangent("beta", beta, 1, False)
    ug = call.channel_tangent("gamma", gamma, 1, False)
    if comm is not None:
        res, _ = call.run(f.TERM_PARAM, 1, ug=ug, ub=ub, out=dst)
        return call.shaped(res, False, out), call.stats
    plan = call.plan(FORWARD, (None,), (False, False, False, False, True, True), (True,), 1, False)
    stats, coef = stats_of_canonical(call.be, x, call.x3, call.dims, call.eps, call.axis, None,
                                     (ug, ub))  # fmt: skip
    call.adopt_stats(stats)
    res = _forward_apply(plan, call.x3, stats, gamma, ug, ub, coef, dst)
    if type(axis) is int:
        _remember(_key(FORWARD, x, gamma, None, (beta,), axis), plan)
    return call.shaped(res, False, out), stats


def vjp_backward(x, gamma, dz, a, stats, a_gamma, a_beta, eps, axis, backend, comm):
    """``(J[a, a_gamma, a_beta], *H<dz, z>(a, a_gamma))``; see :func:`numbabn.vjp_backward`.

    Both are affine in the same per-channel sums of dz and a, so the backend
    reduces once and writes both in one apply pass (``execute_pair``), and the
    call's plan is remembered as :func:`execute` does; a sharded batch runs the
    jvp and the rop_backward.
    """
    args = (dz, a, a_gamma, a_beta)
    plan = _remembered(VJP_BACKWARD, x, gamma, stats, args, eps, axis, backend, comm, None)
    if plan is not None:
        x3, st, slots = _planned_inputs(plan, x, stats, args)
        _, mean, invstd = st._prepared
        return _pair(plan, x, x3, mean, invstd, slots, plan.be.channel_arg(gamma), st.count)
    call, plan, slots, _ = _check(VJP_BACKWARD, x, gamma, stats, args, eps, axis, backend,
                                  comm, None)  # fmt: skip
    if call.comm is not None:
        st = call.stats
        dz_bar = execute(JVP, x, gamma, st, (a, a_gamma, a_beta), backend=call.be.name)
        x_bar, gamma_bar, _ = execute(ROP_BACKWARD, x, gamma, st, (dz, a, None, a_gamma),
                                      backend=call.be.name)  # fmt: skip
        return dz_bar, x_bar, gamma_bar
    count = call.stats.count  # computes the statistics first when none were given
    res = _pair(plan, x, call.x3, call.mean, call.invstd, slots, call.gamma, count)
    _remember(_key(VJP_BACKWARD, x, gamma, stats, args, call.axis), plan)
    return res


def _pair(plan: Plan, x, x3, mean, invstd, slots: list, gamma, count):
    """Run a vjp_backward ``plan``: ``(dz_bar, x_bar, gamma_bar)`` in the caller's kind."""
    be, n_dir = plan.be, plan.n_dir
    dz3, _, a4, _, ug, ub = slots
    jvp_terms = f.TERM_PROJ_U | (f.TERM_PARAM if ug is not None or ub is not None else 0)
    out, (gamma_bar, _) = be.execute_pair(plan.bplan, jvp_terms, x3, mean, invstd, dz3, a4, ug,
                                          ub, gamma, count)  # fmt: skip
    dz_bar, x_bar = (be.wrap(o.reshape(plan.result_shape), x) for o in (out[:n_dir], out[n_dir:]))
    return dz_bar, x_bar, be.wrap(gamma_bar, x)


def _forward_apply(plan: Plan, x3, stats: BatchStats, gamma, ug, ub, coef, out):
    """The forward pass's apply step, with the coefficients the backend made along
    with the statistics (``coef``) or from scratch."""
    be, (_, mean, invstd) = plan.be, stats._prepared
    if coef is not None:
        return be.apply_coefficients(plan.bplan, x3, mean, coef, out)
    gamma64 = be.channel_arg(gamma)
    return be.execute(plan.bplan, x3, mean, invstd, None, None, None, None, ug, ub, gamma64,
                      stats.count, out)[0]  # fmt: skip


def _key(op: Op, x, gamma, stats, args: tuple, axis) -> tuple | None:
    """The plan key of a call, or None when the call cannot run a plan unchecked: an
    argument of another type or dtype object than x, or statistics not made by
    numbabn for x alone."""
    tx, dt = type(x), getattr(x, "dtype", None)
    if dt is None or type(gamma) is not tx or gamma.dtype is not dt:
        return None
    if stats is not None:
        if type(stats) is not BatchStats or stats._prepared is None or stats.comm is not None:
            return None
        if stats.shape != x.shape:
            return None
        axis = stats.axis
    key = [op, tx, dt, x.shape, axis, gamma.shape, config.version]
    for a in args:
        if a is None:
            key.append(None)
        elif type(a) is not tx or a.dtype is not dt:
            return None
        else:
            key.append(a.shape)
    return tuple(key)


def _remember(key: tuple | None, plan: Plan) -> None:
    if key is None:
        return
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan


def _run_plan(op: Op, plan: Plan, x, gamma, stats, args: tuple):
    """Run ``op`` by ``plan`` on arguments known to pass its checks."""
    be = plan.be
    x3, stats, slots = _planned_inputs(plan, x, stats, args)
    _, mean, invstd = stats._prepared
    res, params = be.execute(plan.bplan, x3, mean, invstd, *slots, be.channel_arg(gamma),
                             stats.count, None)  # fmt: skip
    res = be.wrap(res.reshape(plan.result_shape), x)
    if params is None:
        return res
    return res, be.wrap(params[0], x), be.wrap(params[1], x)


def _planned_inputs(plan: Plan, x, stats, args: tuple):
    """``(x3, stats, slots)`` of a call run by ``plan``: x in kernel layout, its
    statistics (computed when None) and the pipeline slots of ``args``."""
    be, slots = plan.be, [None, None, None, None, None, None]
    x3 = be.view(x, plan.x_shape)
    if stats is None:
        stats, _ = stats_of_canonical(be, x, x3, plan.dims, DEFAULT_EPS, DEFAULT_AXIS, None)
    for i, slot, shape in plan.convert:
        a = args[i]
        slots[slot] = be.view(a, shape) if shape is not None else be.channel_rows(a, plan.n_dir)
    return x3, stats, slots


def _checked(op: Op, x, gamma, stats, args: tuple, eps, axis, backend, comm, out):
    """Run ``op`` after every check, and remember its plan when the call qualifies."""
    call, plan, slots, dst = _check(op, x, gamma, stats, args, eps, axis, backend, comm, out)
    res, params = call.execute(plan, slots, dst)
    _remember(_key(op, x, gamma, stats, args, call.axis), plan)
    res = call.shaped(res, plan.batched, out)
    if params is None:
        return res
    return res, call.be.wrap(params[0], x), call.be.wrap(params[1], x)


def _check(op: Op, x, gamma, stats, args: tuple, eps, axis, backend, comm, out):
    """Every check of a call of ``op``: ``(call, plan, slots, out in kernel layout)``."""
    call = Call(x, gamma, stats, eps, axis, backend, dict(zip(op.args, args, strict=True)),
                op.optional, comm)  # fmt: skip
    slots: list[Any] = [None] * 6
    shapes: list[Any] = []
    present = [False] * 6
    n_dir, batched, first = 1, False, None
    terms = op.terms
    for name, slot, a in zip(op.args, op.slots, args, strict=True):
        shapes.append(None)
        if a is None:
            continue
        present[slot] = True
        if name in op.optional:
            terms |= op.optional_terms[op.optional.index(name)]
        if slot in _FIELDS:
            slots[slot] = call.field(name, a)
            shapes[-1] = call.be.kernel_shape(call.dims)
        elif slot in _DIRECTIONS:
            slots[slot], nd, b = call.directions(name, a)
            if first is None:
                first, n_dir, batched = (name, a), nd, b
            elif (nd, b) != (n_dir, batched):
                raise ValueError(
                    f"{name} has shape {tuple(a.shape)} but {first[0]} has shape "
                    f"{tuple(first[1].shape)}; they must carry the same directions"
                )
            shapes[-1] = call.be.kernel_shape((nd, *call.dims))
        else:
            slots[slot] = call.channel_tangent(name, a, n_dir, batched)
    dst = call.output(out, n_dir, batched)
    present_args = tuple(a is not None for a in args)
    plan = call.plan(op, tuple(shapes), tuple(present), present_args, n_dir, batched, terms)
    return call, plan, slots, dst


class Call:
    """The checked arguments shared by a call: backend, x in canonical layout,
    its statistics (computed on first use when not given) and gamma.

    Parameters
    ----------
    x, gamma : arrays
        The batch and the scale parameter, shape (C,).
    stats : BatchStats or None
        Precomputed statistics of ``x``; computed on first use when None.
    eps, axis : float or None, int or None
        None means "from ``stats``" (or 1e-5 and 1 when stats is None); an
        explicit value that disagrees with ``stats`` is a ValueError.
    backend : str
        "auto", "cpu" or "cuda".
    arrays : dict
        Every other array argument by name: they take part in dispatch and the
        dtype check.
    optional : tuple of str
        The names in ``arrays`` that may be None (absent).
    comm : communicator or None
        Reduce over the shards of all ranks; defaults to ``stats.comm``.
    """

    __slots__ = ("be", "dtype", "x", "gamma_in", "arrays", "x3", "dims", "shape", "channels",
                 "eps", "axis", "comm", "_stats", "mean", "invstd", "gamma")  # fmt: skip

    def __init__(
        self,
        x: Any,
        gamma: Any,
        stats: BatchStats | None,
        eps: float | None,
        axis: int | None,
        backend: str,
        arrays: dict[str, Any],
        optional: tuple[str, ...] = (),
        comm: Any = None,
    ) -> None:
        self.x, self.gamma_in, self.arrays = x, gamma, arrays  # also for the checks of out
        self.be = be = select_backend({"x": x, "gamma": gamma, **arrays}, backend, optional)
        self.dtype = call_dtype(x, gamma, arrays)
        if comm is not None:
            comm = check_comm(comm)
        if stats is None:  # validated and laid out once, for the statistics and the call
            self.x3, self.dims, self.axis = canonical_batch(
                be, x, DEFAULT_AXIS if axis is None else axis
            )
            self.eps = normalize_eps(DEFAULT_EPS if eps is None else eps)
            self.comm = comm
            self._stats = None
        else:
            self._use_stats(stats, eps, axis, comm)
        self.shape = x.shape
        self.channels = n_ch = self.dims[1]
        require_shape("gamma", gamma, (n_ch,), "one value per channel of x")
        self.gamma = be.channel_arg(gamma)

    # --- statistics -----------------------------------------------------------------
    def _use_stats(self, stats: Any, eps: Any, axis: Any, comm: Any) -> None:
        """Check ``stats`` against x; take x's layout and the statistics' arrays."""
        x, be = self.x, self.be
        if not isinstance(stats, BatchStats):
            raise TypeError(
                f"stats must be a BatchStats from numbabn.batch_stats, got {type(stats).__name__}"
            )
        if x.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions, got shape {tuple(x.shape)}")
        if axis is not None and normalize_axis(axis, x.ndim) != stats.axis:
            raise ValueError(
                f"stats were computed with axis={stats.axis}, but axis={axis} was given"
            )
        if eps is not None and normalize_eps(eps) != stats.eps:
            raise ValueError(f"stats were computed with eps={stats.eps}, but eps={eps} was given")
        if tuple(x.shape) != stats.shape:
            raise ValueError(
                f"stats belong to a batch of shape {stats.shape}, but x has shape {tuple(x.shape)}"
            )
        if comm is not None and comm is not stats.comm:
            raise ValueError("comm differs from the communicator the stats were reduced over")
        prepared = stats._prepared
        if prepared is not None and prepared[0] is be:  # checked before, or made by numbabn
            self.dims = dims = canonical_dims(stats.shape, stats.axis)
            self.x3 = be.view(x, be.kernel_shape(dims))
            _, self.mean, self.invstd = prepared
        else:
            if array_kind("stats.mean", stats.mean) != be.name:
                raise TypeError(f"stats live on another backend than x ({be.name})")
            self.x3, self.dims, _ = canonical_batch(be, x, stats.axis)
            self.mean, self.invstd = self._stat_args(stats)
        self._stats, self.axis, self.eps, self.comm = stats, stats.axis, stats.eps, stats.comm

    def _stat_args(self, stats: BatchStats) -> tuple[Any, Any]:
        """The statistics' mean and invstd as the kernels take them; remembered on
        ``stats`` when they are used as they are (float64, contiguous, one per channel)."""
        be, n_ch = self.be, self.dims[1]
        arrays = (stats.mean, stats.invstd)
        for name, a in zip(("stats.mean", "stats.invstd"), arrays, strict=True):
            array_kind(name, a)
            require_shape(name, a, (n_ch,), "one value per channel of x")
        if all(be.is_stat_array(a) for a in arrays):
            args = tuple(be.stat_arg(a) for a in arrays)
            object.__setattr__(stats, "_prepared", (be, *args))
        else:
            args = tuple(be.stat_arg(be.float64(a)) for a in arrays)
        return args

    def adopt_stats(self, stats: BatchStats) -> None:
        """Take statistics of x computed elsewhere (made by numbabn for this call)."""
        _, self.mean, self.invstd = stats._prepared
        self._stats = stats

    @property
    def stats(self) -> BatchStats:
        """The statistics of x (computed on first use when the caller gave none)."""
        if self._stats is None:
            stats, _ = stats_of_canonical(self.be, self.x, self.x3, self.dims, self.eps,
                                          self.axis, self.comm)  # fmt: skip
            self.adopt_stats(stats)
        return self._stats

    # --- further arguments ----------------------------------------------------------
    def field(self, name: str, a: Any):
        """An x-shaped argument in kernel layout."""
        require_shape(name, a, self.shape, "the shape of x")
        return self.be.view(a, self.be.kernel_shape(self.dims))

    def directions(self, name: str, a: Any):
        """A direction argument, shape x.shape or (V, *x.shape).

        Returns ``(array in the kernel layout of (V, pre, C, post), V, batched)``.
        """
        shape = tuple(self.shape)
        if tuple(a.shape) == shape:
            return self.be.view(a, self.be.kernel_shape((1, *self.dims))), 1, False
        if a.ndim == len(shape) + 1 and tuple(a.shape[1:]) == shape:
            n_dir = a.shape[0]
            if n_dir == 0:
                raise ValueError(f"{name} has zero directions: shape {tuple(a.shape)}")
            return self.be.view(a, self.be.kernel_shape((n_dir, *self.dims))), n_dir, True
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}; expected the shape of x {shape} or "
            f"(V, *x.shape) for V directions"
        )

    def channel_tangent(self, name: str, a: Any, n_dir: int, batched: bool):
        """A per-channel tangent, shape (C,) or (V, C), in the backend's form."""
        if a is None:
            return None
        c = self.channels
        if tuple(a.shape) == (c,) or (batched and tuple(a.shape) == (n_dir, c)):
            return self.be.channel_rows(a, n_dir)
        expected = f"({c},) or ({n_dir}, {c})" if batched else f"({c},)"
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected {expected}")

    def output(self, out: Any, n_dir: int, batched: bool):
        """The caller's ``out`` array as a writable view in the kernel layout of
        (V, pre, C, post), or None.

        ``out`` must be an array of the same kind as x (NumPy or CUDA), shaped
        like the result, of x's dtype, C-contiguous, writeable, and must not
        share memory with any input.
        """
        if out is None:
            return None
        be = self.be
        kind = array_kind("out", out)
        if kind != be.name:
            raise TypeError(f"out is a {kind} array but x is a {be.name} array")
        shape = (n_dir, *self.shape) if batched else tuple(self.shape)
        require_shape("out", out, shape, "the shape of the result")
        if dtype_of(out) != self.dtype:
            raise TypeError(f"out has dtype {dtype_of(out)}; expected x's dtype {self.dtype}")
        view = be.writable_view(out, be.kernel_shape((n_dir, *self.dims)))
        inputs = {"x": self.x, "gamma": self.gamma_in, **self.arrays}
        for name, a in inputs.items():
            if a is not None and be.overlaps(out, a):
                raise ValueError(f"out shares memory with {name}; pass a separate array")
        return view

    # --- the pipeline ---------------------------------------------------------------
    def plan(self, op: Op, shapes: tuple, present: tuple, present_args: tuple, n_dir: int,
             batched: bool, terms: int | None = None) -> Plan:  # fmt: skip
        """The :class:`Plan` of this call of ``op``: ``shapes`` per argument, which
        slots and which arguments are ``present``, ``terms`` those of this call
        (default: the op's)."""
        be = self.be
        result = (n_dir, *self.shape) if batched else tuple(self.shape)
        bplan = be.plan(op.terms if terms is None else terms, self.dims, n_dir, self.dtype,
                        present, op.params, batched)  # fmt: skip
        given = zip(op.slots, shapes, present_args, strict=True)
        convert = tuple((i, slot, shape) for i, (slot, shape, g) in enumerate(given) if g)
        return Plan(be, self.dims, be.kernel_shape(self.dims), convert, n_dir, batched,
                    result, bplan)  # fmt: skip

    def execute(self, plan: Plan, slots: list, out):
        """Run ``plan`` on the checked arguments in ``slots``; returns ``(out, params)``."""
        stats, be = self.stats, self.be
        if self.comm is None:
            return be.execute(plan.bplan, self.x3, self.mean, self.invstd, *slots, self.gamma,
                              stats.count, out)  # fmt: skip
        dz, h, u, w, ug, ub = slots
        if plan.bplan.terms & ~f.TERM_PARAM:
            sums = be.moment_sums(self.x3, self.mean, self.invstd, dz, h, u, w, plan.n_dir)
            present = {"dz": dz is not None, "h": h is not None, "u": u is not None,
                       "w": w is not None}  # fmt: skip
            sums = reduce_moment_sums(self.comm, be, sums, present)
        else:
            sums = be.zeros((plan.n_dir, f.N_SUMS, self.channels))
        return be.execute_from_sums(plan.bplan, sums, self.x3, self.mean, self.invstd, *slots,
                                    self.gamma, stats.count, out)  # fmt: skip

    def run(self, terms: int, n_dir: int, *, dz=None, h=None, u=None, w=None, ug=None, ub=None,
            out=None, params: bool = False):  # fmt: skip
        """Reduce, compute coefficients, apply, for arguments already in kernel layout.
        Returns ``(out, params)`` as :meth:`execute`."""
        be = self.be
        present = (dz is not None, h is not None, u is not None, w is not None,
                   ug is not None, ub is not None)  # fmt: skip
        bplan = be.plan(terms, self.dims, n_dir, self.dtype, present, params, True)
        plan = Plan(be, self.dims, be.kernel_shape(self.dims), (), n_dir, False, (), bplan)
        return self.execute(plan, [dz, h, u, w, ug, ub], out)

    def shaped(self, res, batched: bool, out: Any = None):
        """A result in kernel layout as x.shape or (V, *x.shape), in the caller's
        kind; the caller's ``out`` array itself when one was given."""
        if out is not None:
            return out
        shape = (res.shape[0], *self.shape) if batched else tuple(self.shape)
        return self.be.wrap(res.reshape(shape), self.x)

    def apply_hz(self, hz: Any, t):
        """Apply a curvature callable to each direction of ``t`` (kernel layout of
        (V, pre, C, post))."""
        be, shape = self.be, tuple(self.shape)
        n_dir = t.shape[0]
        w = be.empty(be.kernel_shape((n_dir, *self.dims)), self.dtype, self.x3)
        for v in range(n_dir):
            r = hz(be.wrap(t[v].reshape(shape), self.x))
            if array_kind("hz(t)", r) != be.name:
                raise TypeError(f"hz returned a {type(r).__name__}; expected a {be.name} array")
            require_shape("hz(t)", r, shape, "hz must return an array shaped like x")
            be.assign(w, v, be.view(r, be.kernel_shape(self.dims)))
        return be.view(w, be.kernel_shape((n_dir, *self.dims)))
