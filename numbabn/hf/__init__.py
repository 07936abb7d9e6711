"""Hessian-free training of networks with BatchNorm: exact Hessian- and
GGN-vector products of a sequential network (numbabn kernels for BatchNorm)
and a Hessian-free optimizer (Martens 2010)."""

from .curvature import CurvatureOperator
from .layers import BatchNorm, Linear, ReLU, Tanh
from .network import Sequential
from .optimizer import HessianFree

__all__ = ["Sequential", "Linear", "BatchNorm", "Tanh", "ReLU", "HessianFree", "CurvatureOperator"]
