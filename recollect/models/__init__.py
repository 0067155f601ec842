"""Models of the paper, all grouped (``G`` independent copies fused, see ``recollect.grouped``).

``vae``: the categorical (Gumbel-softmax) convolutional autoencoder of section 4.2 / appendix A and
the continuous autoencoder of Table 6. ``classifiers``: LeNet, the MLP of Table 2, GEM's reduced
ResNet-18 and a ResNet-18 for 28x28 Omniglot.
"""
from .vae import CategoricalVAE, ContinuousAE, gumbel_softmax_st, vae_param_bits  # noqa: F401
from .classifiers import LeNet, MLP, ResNet18, make_classifier  # noqa: F401
