"""Where `load_pretrained_model` places the weights: the `device_map` rule of the original builder."""
from mgm.model.builder import device_map_for


def test_bare_cuda_spreads_with_the_given_map():
    assert device_map_for("cuda", "auto", quantized=False) == "auto"
    assert device_map_for("cuda", "auto", quantized=True) == "auto"


def test_indexed_cuda_stays_on_that_gpu():
    # `cuda:1` with the default device_map="auto" must not spread over every visible GPU
    assert device_map_for("cuda:1", "auto", quantized=False) is None
    assert device_map_for("cuda:1", "auto", quantized=True) == {"": "cuda:1"}


def test_cpu_and_mps_load_then_move_unless_quantized():
    assert device_map_for("cpu", "auto", quantized=False) is None
    assert device_map_for("mps", "auto", quantized=False) is None
    assert device_map_for("cpu", "auto", quantized=True) == {"": "cpu"}
    assert device_map_for("cuda", None, quantized=False) is None
