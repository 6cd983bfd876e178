import numpy as np
from scipy import ndimage
from bids_app.models.export import reference_input
x = reference_input(0, 1)[0]
nz = (np.abs(x).sum(0) > 0)
print('input nonzero fraction', nz.mean(), nz.shape)
# conv1 valid 3^3: output (94,118,84) depends on window
dep1 = ndimage.maximum_filter(nz.astype(np.uint8), size=3, mode='constant')[1:-1,1:-1,1:-1] > 0
print('conv1 outputs that depend on input (not constant)', dep1.mean())
# conv2 same 3^3 (pad 1 zero): output non-constant if window touches dep1 or the zero padding (border)
dep2 = ndimage.maximum_filter(dep1.astype(np.uint8), size=3, mode='constant') > 0
border = np.zeros_like(dep2); border[[0,-1],:,:]=1; border[:,[0,-1],:]=1; border[:,:,[0,-1]]=1
dep2b = dep2 | border.astype(bool)
print('conv2 outputs not constant', dep2b.mean())
# tile-level skipping: tiles of size t along each axis skippable if all outputs constant
for t in (4, 8, 16):
    for name, d in (('conv1', dep1), ('conv2', dep2b)):
        s = d.shape
        pad = [(0, (-n) % t) for n in s]
        dd = np.pad(d, pad)
        tiles = dd.reshape(dd.shape[0]//t, t, dd.shape[1]//t, t, dd.shape[2]//t, t).any(axis=(1,3,5))
        print(f'tile {t}: {name} fraction of tiles that must be computed {tiles.mean():.3f}')
# D-slab skipping (whole planes of constant output along each axis)
for name, d in (('conv1', dep1), ('conv2', dep2b)):
    print(name, 'planes computed per axis', [float(d.any(axis=tuple(j for j in range(3) if j != a)).mean()) for a in range(3)])
