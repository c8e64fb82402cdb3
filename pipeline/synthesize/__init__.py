"""Stage `synthesize`: a synthetic non-contrast head CT, packed like the Kaggle stroke archive.

Each case is one head: a random anatomy (head shape, size, rotation, skull, ventricles, sulci,
skull base) built from smooth 3-D functions of the in-plane position and the slice height z,
so structures change gradually from slice to slice, and one 3-D lesion spanning consecutive
slices. Hemorrhagic and ischemic cases share the anatomy generator and the window; only the
lesion differs. Slices are built in Hounsfield units (float32), blurred, given noise, then
windowed to 8-bit (brain window W 80 / L 40). The lesion mask comes from the same geometry as
the image: it is exactly the set of pixels whose HU the lesion changed.

Lengths in pixels are given at 512 px and scale with `image_size`. Randomness comes from one
generator per case seeded by (seed, class, case ordinal), so output never depends on the
number of workers or on the order in which cases are rendered.

The parts, in the order a case goes through them:
- `layout`: which cases the archive holds and where their files go (the Kaggle layout);
- `anatomy`: tissue densities and the random head of a case;
- `lesions`: its hemorrhage or infarct;
- `scanner`: its ears, head holder, streaks and out-of-plane tilt;
- `rendering`: one slice in HU from the case model;
- `archive`: every case to PNGs in the zip, with fixed timestamps;
- `dicom_series`: the cases of `phantom.dicom_subsets` as DICOM CT series;
- `montage`: reports/phantom_montage.png.
"""
