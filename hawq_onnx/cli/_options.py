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


def model_options(f):
    return model_option(weights_option(input_shape_option(f)))
