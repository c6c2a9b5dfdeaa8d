"""Synthetic scenes for the quality lab: one structured subject on a textured background.

The lab's models learn these 4-channel images directly (no VAE), so the channels carry
what the counter must read back exactly, and the appearance that makes the task real:

* channel 0, appearance: the background's colour with a stripe texture, the subject's own
  colour with a finer texture;
* channel 1, eyes: +S on the two eyes, -S elsewhere on the head, 0 off the head;
* channel 2, parts: +S on the head, -S on the body, 0 on the background;
* channel 3, mask: +S on the subject (body and head), -S on the background.

S is :data:`STRUCTURE`, the counter reads signs. The three structure channels are
flat: the lab measures composition, and a texture there would only add a second,
unrelated thing a small model must learn.

A subject is a body (an ellipse), a head (a circle above it, along the body's axis) and
two eyes (small discs inside the head, across the axis). Its height is 40-70 % of the
frame's shorter side, its pose a rotation of up to 30 degrees, its place anywhere the
whole subject fits. Everything comes from one ``torch.Generator``: the same seed gives
the same scene in every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHANNELS = 4
APPEARANCE, EYES, PARTS, MASK = range(CHANNELS)
HEIGHT_RANGE = (0.40, 0.70)
"""Subject height as a fraction of the frame's shorter side."""
MAX_TILT = math.radians(30)
EYE_GAP = 0.55
"""The least distance from an eye's rim to the head's axis, in pixels. The eyes sit half a
head radius off the axis; on heads of radius below 2.75 px (at native sides below 32) that
would merge them, so there they sit this far out. Above it the rule changes nothing, so
the 32-px scenes the SDXL-layout model learned are the same."""


@dataclass(frozen=True)
class Proportions:
    """A subject's face as fractions: the head's radius of the subject's height, the eyes'
    radius and their distance from the head's axis of the head's radius, and the least eye
    radius in pixels."""

    head: float = 0.22
    eye: float = 0.3
    eye_offset: float = 0.5
    least_eye: float = 0.85


UNET_FACES = Proportions()
"""The faces the UNet layouts learned."""
DIT_FACES = Proportions(head=0.26, eye=0.4, eye_offset=0.6, least_eye=1.25)
"""Larger heads and eyes for the DiT layouts. A DiT sees the latent in 2x2 patches; at the
UNet faces its eyes are 1.7-3 latent px across, about one patch, and the Flux-layout model
trained on them drew native heads with two clear eyes in 1 of 8 samples (0 of 8 after twice
the steps: more eye blobs per head, not two). Here every eye is drawn at least 2.5 px across;
at the native side of 32 and above it covers at least a patch's 4 pixels (the UNet faces'
smallest eye: 1 pixel at 32), and the eyes stay 1.3-2 px apart."""
STRUCTURE = 3.0
"""Amplitude of the eyes, parts and mask channels (the appearance channel stays near 1).
The counter reads signs. Measured on the earlier 32-channel models: grain of std about 0.3
and per-image offsets in every channel, which at amplitude 1 flipped signs inside heads
and read as stray eyes and subjects. At 3 they stay far from the thresholds."""


@dataclass(frozen=True)
class Subject:
    """One figure: centre of the body, full height (head included), tilt, colour."""

    y: float
    x: float
    height: float
    tilt: float
    colour: float
    face: Proportions = UNET_FACES

    @property
    def body(self) -> tuple[float, float]:
        """Semi-axes (along, across) of the body ellipse."""
        return 0.30 * self.height, 0.22 * self.height

    @property
    def head_radius(self) -> float:
        return self.face.head * self.height

    @property
    def axis(self) -> tuple[float, float]:
        """Unit vector from the body's centre towards the head (y, x); up is -y."""
        return -math.cos(self.tilt), math.sin(self.tilt)

    @property
    def head_centre(self) -> tuple[float, float]:
        along = self.body[0] + 0.75 * self.head_radius
        ay, ax = self.axis
        return self.y + along * ay, self.x + along * ax

    @property
    def eye_centres(self) -> list[tuple[float, float]]:
        hy, hx = self.head_centre
        ay, ax = self.axis
        across = (ax, -ay)  # perpendicular to the axis
        offset = max(self.face.eye_offset * self.head_radius, self.eye_radius + EYE_GAP)
        lift = 0.1 * self.head_radius
        return [
            (hy + side * offset * across[0] + lift * ay, hx + side * offset * across[1] + lift * ax)
            for side in (-1.0, 1.0)
        ]

    @property
    def eye_radius(self) -> float:
        return max(self.face.eye * self.head_radius, self.face.least_eye)

    def extent(self) -> float:
        """A radius around the body's centre that holds the whole subject."""
        along = self.body[0] + 0.75 * self.head_radius + self.head_radius
        return max(along, self.body[0]) + 1.0


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width) + 0.5
    return ys, xs


def _disc(ys: torch.Tensor, xs: torch.Tensor, centre: tuple[float, float], radius: float) -> torch.Tensor:
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2


def _ellipse(ys: torch.Tensor, xs: torch.Tensor, subject: Subject) -> torch.Tensor:
    ay, ax = subject.axis
    dy, dx = ys - subject.y, xs - subject.x
    along = dy * ay + dx * ax
    across = dy * ax - dx * ay
    a, b = subject.body
    return (along / a) ** 2 + (across / b) ** 2 <= 1.0


def random_subject(
    generator: torch.Generator, height: int, width: int, scale: float = 1.0, face: Proportions = UNET_FACES
) -> Subject:
    """A subject that fits a height x width frame; ``scale`` multiplies the drawn size."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    size = uniform(*HEIGHT_RANGE) * min(height, width) * scale
    tilt = uniform(-MAX_TILT, MAX_TILT)
    colour = uniform(-1.0, 1.0)
    probe = Subject(0.0, 0.0, size, tilt, colour, face)
    # the body's centre sits so that the head and body stay inside the frame
    ay, ax = probe.axis
    head_y, head_x = probe.head_centre
    reach = probe.head_radius + 1.0
    b = max(probe.body) + 1.0
    low_y = max(b, -head_y + reach)
    high_y = min(height - b, height - head_y - reach)
    low_x = max(b, -head_x + reach)
    high_x = min(width - b, width - head_x - reach)
    if low_y > high_y or low_x > high_x:
        raise ValueError(f"a subject of height {size:.1f} does not fit a {height}x{width} frame")
    return Subject(uniform(low_y, high_y), uniform(low_x, high_x), size, tilt, colour, face)


def background(generator: torch.Generator, height: int, width: int) -> torch.Tensor:
    """The textured background (4, height, width): stripes of a random angle and period."""
    ys, xs = _grid(height, width)
    angle = float(torch.rand((), generator=generator)) * math.pi
    period = 6.0 + 6.0 * float(torch.rand((), generator=generator))
    colour = -1.0 + 2.0 * float(torch.rand((), generator=generator))
    stripes = torch.sin((ys * math.cos(angle) + xs * math.sin(angle)) * (2 * math.pi / period))
    image = torch.zeros(CHANNELS, height, width)
    image[APPEARANCE] = 0.6 * colour + 0.3 * stripes
    image[MASK] = -STRUCTURE
    return image


def draw(image: torch.Tensor, subject: Subject) -> torch.Tensor:
    """``image`` with ``subject`` painted on it (a new tensor)."""
    out = image.clone()
    _, height, width = out.shape
    ys, xs = _grid(height, width)
    body = _ellipse(ys, xs, subject)
    head = _disc(ys, xs, subject.head_centre, subject.head_radius)
    eyes = torch.zeros_like(head)
    for centre in subject.eye_centres:
        eyes |= _disc(ys, xs, centre, subject.eye_radius)
    eyes &= head
    figure = body | head
    texture = 0.15 * torch.cos(xs * 1.1 + ys * 0.6)
    out[APPEARANCE] = torch.where(figure, subject.colour * 0.8 + texture, out[APPEARANCE])
    out[MASK] = torch.where(figure, STRUCTURE, out[MASK])
    out[PARTS] = torch.where(head, STRUCTURE, torch.where(body, -STRUCTURE, out[PARTS]))
    out[EYES] = torch.where(head, torch.where(eyes, STRUCTURE, -STRUCTURE), out[EYES])
    return out


def scene(seed: int, height: int, width: int, face: Proportions = UNET_FACES) -> tuple[torch.Tensor, Subject]:
    """One training scene: a background and exactly one subject."""
    generator = torch.Generator().manual_seed(seed)
    image = background(generator, height, width)
    subject = random_subject(generator, height, width, face=face)
    return draw(image, subject), subject


def composed_scene(
    seed: int, height: int, width: int, count: int, native: int, face: Proportions = UNET_FACES
) -> tuple[torch.Tensor, list[Subject]]:
    """A frame with ``count`` subjects of the training sizes for ``native``, none touching another.

    For the counter's tests: subjects are placed one per cell of a grid (cells of at least
    ``native`` px), each inside its cell with a pixel to spare, so none overlap or touch.
    """
    generator = torch.Generator().manual_seed(seed)
    image = background(generator, height, width)
    columns = math.ceil(math.sqrt(count * width / height))
    rows = math.ceil(count / columns)
    cell_h, cell_w = height // rows, width // columns
    if min(cell_h, cell_w) < native:
        raise ValueError(f"{count} subjects of native size {native} do not fit a {height}x{width} frame")
    subjects = []
    for index in range(count):
        row, column = divmod(index, columns)
        local = random_subject(generator, cell_h, cell_w, scale=native / min(cell_h, cell_w), face=face)
        placed = Subject(
            local.y + row * cell_h, local.x + column * cell_w, local.height, local.tilt, local.colour, face
        )
        image = draw(image, placed)
        subjects.append(placed)
    return image, subjects


def batch(seeds: range | list[int], height: int, width: int, face: Proportions = UNET_FACES) -> torch.Tensor:
    """Training scenes for ``seeds`` stacked as (N, 4, height, width)."""
    return torch.stack([scene(seed, height, width, face)[0] for seed in seeds])
