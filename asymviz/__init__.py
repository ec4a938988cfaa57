"""asymviz: an interactive lab for asymmetric training of feed-forward neural networks.

The forward pass uses every parameter; the backward pass only a chosen subset
(sparsified backpropagation). See DESIGN.md for the math and the module map.
"""

__version__ = "0.1.0"
