"""Learning rules: factories returning :class:`LearningRule` bundles of pure functions."""

from jaxbio.rules.base import (EmptyState, LearningRule, Pass, Phase, RuleOutput, accuracy,
                               check_batch, classification_metrics, cross_entropy, with_penalty)
from jaxbio.rules.burst import BurstpropState, BurstState, burstccn, burstprop
from jaxbio.rules.feedback import (FeedbackState, backprop, direct_feedback_alignment,
                                   feedback_alignment, kolen_pollack, sign_symmetry)
from jaxbio.rules.target_prop import TPState, ao_sdtp, dtp, sdtp, tp
from jaxbio.rules.spiking_feedback import RDDState, feedback_phase, rdd, weight_mirror

# Rules on feedforward (sequential) networks, by registry name.
FEEDFORWARD_RULES = {
    "bp": backprop,
    "fa": feedback_alignment,
    "dfa": direct_feedback_alignment,
    "kp": kolen_pollack,
    "sign_symmetry": sign_symmetry,
    "burstccn": burstccn,
    "burstprop": burstprop,
    "tp": tp,
    "dtp": dtp,
    "sdtp": sdtp,
    "ao_sdtp": ao_sdtp,
    "rdd": rdd,
    "weight_mirror": weight_mirror,
}

__all__ = [
    "EmptyState", "FeedbackState", "LearningRule", "Pass", "Phase", "RuleOutput", "accuracy",
    "check_batch", "classification_metrics", "cross_entropy",
    "with_penalty", "backprop", "direct_feedback_alignment", "feedback_alignment",
    "kolen_pollack", "sign_symmetry", "burstccn", "burstprop", "BurstState", "BurstpropState",
    "tp", "dtp", "sdtp", "ao_sdtp", "TPState", "FEEDFORWARD_RULES",
    "rdd", "RDDState", "feedback_phase", "weight_mirror",
]
