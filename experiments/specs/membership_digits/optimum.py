import json, time
from diffmem.data.io import load_image_set
from diffmem.denoisers.optimal import OptimalDenoiser
from diffmem.metrics.membership import membership
train, held = load_image_set("d64.zip"), load_image_set("held64.zip")
D = OptimalDenoiser(train)
out = {}
for m in ("loss", "secmi"):
    t = time.time()
    r = membership(D, train, held, method=m)
    out[m] = {**r.summary(), "wall_s": round(time.time() - t, 1)}
print(json.dumps(out))
