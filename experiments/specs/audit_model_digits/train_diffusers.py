"""Train a small diffusers UNet2DModel (DDPM, epsilon prediction) briefly on the 16 training digits,
so that `diffmem audit` can be run on a diffusers folder. Usage: python train_diffusers.py TRAIN.zip OUT STEPS"""

import sys
import time

import diffusers
import torch

from diffmem.data import load_image_set

train, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
y = torch.from_numpy(load_image_set(train).to_model())  # (16, 1, 8, 8) in [-1, 1]
unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                             layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                             up_block_types=("UpBlock2D",) * 2)
sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
t0 = time.time()
for step in range(steps):
    t = torch.randint(0, 1000, (len(y),))
    noise = torch.randn_like(y)
    loss = torch.nn.functional.mse_loss(unet(sched.add_noise(y, noise, t), t).sample, noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 500 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
unet.save_pretrained(out)
sched.save_pretrained(out)
print(f"{sum(p.numel() for p in unet.parameters())} parameters, {steps} steps, {time.time() - t0:.0f} s")
