"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

model_option = click.option("--model", "model_ref", default=None, metavar="M",
                            help="Zoo name (digits-cnn, resnet20-cifar10, ...), FILE.py:factory or package.module:factory. Default: digits-cnn.")
weights_option = click.option("--weights", default=None, metavar="CKPT",
                              help="state_dict checkpoint (plain or {'state_dict': ...}).")
input_shape_option = click.option("--input-shape", default=None, metavar="C,H,W",
                                  help="Input shape without batch, for models that declare none (default: one sample of --data).")
data_option = click.option("--data", default=None, metavar="D",
                           help="digits | cifar10:DIR | npz:FILE. Default: the model's own (digits for digits-cnn).")
device_option = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
seed_option = click.option("--seed", type=int, default=0, show_default=True)
weight_range_option = click.option(
    "--weight-range", type=click.Choice(["narrow", "full"]), default="narrow", show_default=True,
    help="Integer range of 2/3/4-bit weights: narrow [-(2^(b-1)-1), 2^(b-1)-1] (2 bits: -1, 0, 1) or full, "
         "with the extra negative level (2 bits: -2..1, as LSQ). Recorded in the plan; 8 bits stay narrow.")
step_lr_option = click.option(
    "--step-lr", type=float, default=None, metavar="F",
    help="Train the quantized layers' weights at this peak learning rate in units of their channel's "
         "quantization step (0.01: an Adam update moves a weight by about 1 % of its step); biases and "
         "float layers keep --lr. Adam only. Default: off (--lr for all).")


def model_options(f):
    return model_option(weights_option(input_shape_option(f)))
