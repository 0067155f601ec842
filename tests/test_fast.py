import torch

from recollect.grouped import GroupedAdam, grouped_cross_entropy, select_group
from recollect.models import LeNet
from recollect.train.fast import TrainStep


def _loss(model, x, y):
    return grouped_cross_entropy(model(x), y)


def test_trainstep_eager_is_the_plain_step():
    torch.manual_seed(0)
    a = LeNet(groups=2)
    b = select_group(a, 0), select_group(a, 1)
    from recollect.grouped import stack_groups
    b = stack_groups(list(b))
    step = TrainStep(a, GroupedAdam(a.parameters(), lr=1e-3), _loss, cuda_graph=True)  # CPU: no graph
    opt = GroupedAdam(b.parameters(), lr=1e-3)
    for i in range(3):
        x, y = torch.rand(2, 4, 1, 28, 28), torch.randint(0, 10, (2, 4))
        la = step(x, y)
        lb = _loss(b, x, y)
        opt.zero_grad(); lb.sum().backward(); opt.step()
        assert torch.allclose(la, lb.detach())
    assert not step.cuda_graph
