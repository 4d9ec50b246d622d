"""Flax NNX models: DenseNet encoders, ResNet-50, the bridge decoder, DepthNet."""

from percdepth_jax.models.config import ModelConfig
from percdepth_jax.models.decoder import BridgeBlock, Decoder
from percdepth_jax.models.densenet import DENSENET_SPECS, DenseNet
from percdepth_jax.models.depth_net import (INPUT_MULTIPLE, DepthNet,
                                            metres_to_target, target_to_metres)
from percdepth_jax.models.resnet import ResNet50

__all__ = ["BridgeBlock", "DENSENET_SPECS", "Decoder", "DenseNet", "DepthNet",
           "INPUT_MULTIPLE", "ModelConfig", "ResNet50", "metres_to_target", "target_to_metres"]
