"""The smallest training run the fault and checksum tests take apart (16 synthetic images, 1 epoch)."""
from gradmask.train import TrainConfig


def tiny(out, **kw) -> TrainConfig:
    """A one-epoch, 16-image synthetic run in ``out``; ``kw`` overrides any field."""
    base = dict(train_limit=16, test_limit=16, synthetic_train=16, synthetic_test=16, epochs=1, batch_size=16,
                lr=0.05, mask="none", progress=False, out=str(out))
    return TrainConfig.from_dict({**base, **kw})
