"""Per-channel scalar math shared by the CPU and CUDA kernels.

Every operation of numbabn is *reduce, then apply* (docs/design.md):

1. a reduction pass accumulates per-channel sums into the slots ``S_*`` below;
2. :func:`channel_coefficients` turns one channel's sums into the affine
   coefficients ``K_*`` (and the parameter outputs ``P_*``);
3. an apply pass writes, for every element,

   ``out = K_U*u + K_W*w + K_DZ*dz + K_X*xc + K_1 + h*(KH_U*u + KH_X*xc + KH_1)``

   with ``xc = x - mean``: the coefficients of the centred input carry the
   factor invstd, so the apply pass reads one per-channel array less.

The functions here are plain Python on scalars and array elements, so Numba
compiles them both with ``@njit`` and as CUDA device functions: the math is
written once.

Notation (per channel): ``g`` = gamma, ``s`` = invstd, ``m`` = M, the number of
reduced elements; ``xhat = (x - mean) * s``; ``P(p) = s*(p - mean(p) - xhat*mean(xhat*p))``.
"""

# --- sum slots (axis 1 of the ``sums`` array, shape (V, N_SUMS, C)) ---------------
S_U = 0  # sum u
S_XU = 1  # sum xhat*u
S_DZ = 2  # sum dz
S_XDZ = 3  # sum xhat*dz
S_DZU = 4  # sum dz*u
S_H = 5  # sum h
S_HX = 6  # sum h*xhat
S_HXX = 7  # sum h*xhat^2
S_HU = 8  # sum h*u
S_HXU = 9  # sum h*xhat*u
S_W = 10  # sum w
S_XW = 11  # sum xhat*w
N_SUMS = 12
#: Slots that do not depend on the direction (filled once, shared by all V).
DIRECTION_INDEPENDENT_SLOTS = (S_DZ, S_XDZ, S_H, S_HX, S_HXX)

#: Which sums each input fills: the one table every reduction path follows.
#: Keys are an input, or a pair of inputs whose product is summed; slots whose
#: key names an absent input stay zero.
SUM_SLOTS_OF_INPUTS = {
    ("dz",): (S_DZ, S_XDZ),
    ("h",): (S_H, S_HX, S_HXX),
    ("u",): (S_U, S_XU),
    ("u", "dz"): (S_DZU,),
    ("u", "h"): (S_HU, S_HXU),
    ("w",): (S_W, S_XW),
}


def filled_sum_slots(dz: bool, h: bool, u: bool, w: bool) -> tuple[list[int], list[int]]:
    """(direction-independent, per-direction) sum slots that a reduction fills
    for the inputs present, from :data:`SUM_SLOTS_OF_INPUTS`."""
    present = {"dz": dz, "h": h, "u": u, "w": w}
    once, per_direction = [], []
    for inputs, slots in SUM_SLOTS_OF_INPUTS.items():
        if all(present[name] for name in inputs):
            for slot in slots:
                (once if slot in DIRECTION_INDEPENDENT_SLOTS else per_direction).append(slot)
    return once, per_direction


# --- coefficient slots (axis 1 of the ``coef`` array, shape (V, N_COEF, C)) -------
K_U = 0
K_W = 1
K_DZ = 2
K_X = 3
K_1 = 4
KH_U = 5
KH_X = 6
KH_1 = 7
P_GAMMA = 8  # parameter output for gamma (vjp: dgamma, rop_backward: dgamma')
P_BETA = 9  # parameter output for beta
N_COEF = 10

# --- terms (bit flags) that an operation adds up -----------------------------------
TERM_PROJ_U = 1  # gamma * P(u)                      (input JVP)
TERM_PARAM = 2  # u_gamma * xhat + u_beta            (parameter tangents; forward)
TERM_RVP = 4  # R(dz) u                             (residual-vector product)
TERM_CURV = 8  # gamma * P(h * J u)                 (diagonal output curvature)
TERM_PROJ_W = 16  # gamma * P(w), with w's sums as the parameter gradients (VJP)
TERM_UG_PROJ_DZ = 32  # u_gamma * P(dz)             (R-operator backward)


def channel_coefficients(terms, sums, v, c, g, s, m, ug, ub, coef):
    """Write one channel's affine coefficients for direction ``v``.

    Parameters
    ----------
    terms : int
        Bitwise OR of the ``TERM_*`` flags to add up.
    sums : array, shape (V, N_SUMS, C), float64
        Per-channel sums from the reduction pass (unused slots are zero).
    v, c : int
        Direction and channel index.
    g, s, m : float
        gamma, invstd and the number of reduced elements M of channel ``c``.
    ug, ub : float
        Tangents of gamma and beta for this direction and channel (0 if absent).
    coef : array, shape (V, N_COEF, C), float64
        Output; the column ``coef[v, :, c]`` is overwritten.
    """
    inv_m = 1.0 / m
    gs = g * s
    k_u = 0.0
    k_w = 0.0
    k_dz = 0.0
    k_x = 0.0
    k_1 = 0.0
    kh_u = 0.0
    kh_x = 0.0
    kh_1 = 0.0
    p_gamma = 0.0
    p_beta = 0.0
    if terms & TERM_PROJ_U:  # gamma*s*(u - mean(u) - xhat*mean(xhat*u))
        k_u += gs
        k_x -= gs * sums[v, S_XU, c] * inv_m
        k_1 -= gs * sums[v, S_U, c] * inv_m
    if terms & TERM_PARAM:  # u_gamma*xhat + u_beta
        k_x += ug
        k_1 += ub
    if terms & TERM_PROJ_W:  # gamma*s*(w - mean(w) - xhat*mean(xhat*w)); sum xhat*w, sum w
        k_w += gs
        k_x -= gs * sums[v, S_XW, c] * inv_m
        k_1 -= gs * sums[v, S_W, c] * inv_m
        p_gamma += sums[v, S_XW, c]
        p_beta += sums[v, S_W, c]
    if terms & TERM_UG_PROJ_DZ:  # u_gamma*s*(dz - mean(dz) - xhat*mean(xhat*dz))
        ugs = ug * s
        k_dz += ugs
        k_x -= ugs * sums[v, S_XDZ, c] * inv_m
        k_1 -= ugs * sums[v, S_DZ, c] * inv_m
    if terms & TERM_RVP:
        # R(dz) u = k*(-dz*A + B*A/M - xhat*C + xhat*B*V/M - u*E + E*V/M + 3/M*xhat*A*E)
        # with A = sum xhat*u, B = sum dz, C = sum dz*u, V = sum u, E = sum xhat*dz
        sum_xu = sums[v, S_XU, c]
        sum_dz = sums[v, S_DZ, c]
        sum_dzu = sums[v, S_DZU, c]
        sum_u = sums[v, S_U, c]
        sum_xdz = sums[v, S_XDZ, c]
        k = gs * s * inv_m
        k_dz -= k * sum_xu
        k_x += k * (-sum_dzu + sum_dz * sum_u * inv_m + 3.0 * sum_xu * sum_xdz * inv_m)
        k_u -= k * sum_xdz
        k_1 += k * (sum_dz * sum_xu + sum_xdz * sum_u) * inv_m
        # sum dz * P(u) = s*(C - B*V/M - E*A/M): the mixed gamma-x second derivative
        p_gamma += s * (sum_dzu - sum_dz * sum_u * inv_m - sum_xdz * sum_xu * inv_m)
    if terms & TERM_CURV:
        # gamma*P(t) with t = h * J u and J u = a1*u + b1*xhat + c1: mean(t) and
        # mean(xhat*t) from the sums of h, h*u, h*xhat, h*xhat*u and h*xhat^2
        a1 = gs
        b1 = -gs * sums[v, S_XU, c] * inv_m
        c1 = -gs * sums[v, S_U, c] * inv_m
        mean_t = (a1 * sums[v, S_HU, c] + b1 * sums[v, S_HX, c] + c1 * sums[v, S_H, c]) * inv_m
        mean_xt = (a1 * sums[v, S_HXU, c] + b1 * sums[v, S_HXX, c] + c1 * sums[v, S_HX, c]) * inv_m
        kh_u += gs * a1
        kh_x += gs * b1
        kh_1 += gs * c1
        k_1 -= gs * mean_t
        k_x -= gs * mean_xt
    coef[v, K_U, c] = k_u
    coef[v, K_W, c] = k_w
    coef[v, K_DZ, c] = k_dz
    coef[v, K_X, c] = k_x * s  # k_x * xhat == (k_x * s) * (x - mean)
    coef[v, K_1, c] = k_1
    coef[v, KH_U, c] = kh_u
    coef[v, KH_X, c] = kh_x * s
    coef[v, KH_1, c] = kh_1
    coef[v, P_GAMMA, c] = p_gamma
    coef[v, P_BETA, c] = p_beta


def affine_value(coef, v, c, xc, uv, wv, dzv, hv):
    """One output element from its channel's coefficients, ``xc = x - mean``
    (absent inputs are 0)."""
    r = coef[v, K_X, c] * xc + coef[v, K_1, c]
    r += coef[v, K_U, c] * uv + coef[v, K_W, c] * wv + coef[v, K_DZ, c] * dzv
    return r + hv * (coef[v, KH_U, c] * uv + coef[v, KH_X, c] * xc + coef[v, KH_1, c])


def channel_variance(sum_d, sum_d2, m):
    """Biased variance from sums of ``d = x - shift`` and ``d**2`` (shift near the mean).

    The corrected two-pass formula ``(sum d^2 - (sum d)^2 / m) / m`` removes the
    first-order error of an inexact shift; the result is clamped at zero.
    """
    var = (sum_d2 - sum_d * sum_d / m) / m
    if var < 0.0:
        var = 0.0
    return var
