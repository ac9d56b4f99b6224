"""Convergent recurrent networks and holomorphic equilibrium propagation (hEP).

Laborieux & Zenke, "Improving equilibrium propagation without weight symmetry
through Jacobian homeostasis", ICLR 2024 (arXiv:2309.02214). The algorithm
follows the authors' code, github.com/Laborieux-Axel/generalized-holo-ep.

* :func:`make_network`: ``hep_mlp``, ``hep_loop_mlp``, ``hep_cnn``.
* :func:`make_rule`: ``ep``, ``hep`` (N = 0, 1, 2, ≥ 3), ``hep_online``,
  ``rbp``, ``bptt``; each returns a :class:`jaxbio.rules.base.LearningRule`
  (the factories themselves live in :mod:`jaxbio.recurrent.hep`).
* Homeostasis: :func:`homeostasis_loss`, :func:`exact_homeostasis_loss`,
  :func:`homeostasis_penalty` (for :func:`jaxbio.rules.base.with_penalty`).
* Metrics: :func:`jacobian_symmetry`, :func:`weight_angle`,
  :func:`error_alignment`, :func:`fixed_point_residual`; :data:`IMAG_BOUND`
  (π/4), the bound on max |Im u| of the complex nudged phases (the rules'
  ``max_abs_imag_u`` metric) within which the MLP's σ stays analytic.
"""

from jaxbio.recurrent.dynamics import (IMAG_BOUND, free_phase, neuronal_error, online_phase,
                                       rbp_adjoint)
from jaxbio.recurrent import hep
from jaxbio.recurrent.hep import RULES, make_rule, vector_field_grads
from jaxbio.recurrent.homeostasis import (closed_form_homeostasis_loss, exact_homeostasis_loss,
                                          full_jacobian, homeostasis_loss, homeostasis_penalty)
from jaxbio.recurrent.metrics import (diagnostics, error_alignment, fixed_point_residual, jacobian_symmetry,
                                      weight_angle)
from jaxbio.recurrent.network import ARCHS, HEPNetwork, make_network, num_params
from jaxbio.recurrent.vector_fields import VectorField, dsilu, hard_sigmoid

__all__ = [
    "ARCHS", "HEPNetwork", "IMAG_BOUND", "RULES", "VectorField", "closed_form_homeostasis_loss", "diagnostics", "dsilu",
    "error_alignment", "exact_homeostasis_loss", "fixed_point_residual", "free_phase",
    "full_jacobian", "hard_sigmoid", "hep", "homeostasis_loss", "homeostasis_penalty",
    "jacobian_symmetry", "make_network", "make_rule", "neuronal_error", "num_params",
    "online_phase", "rbp_adjoint", "vector_field_grads", "weight_angle",
]
