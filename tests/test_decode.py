from fractions import Fraction

import numpy as np
import pytest
import torch

from extract.decode import (
    DecodeError,
    DecodeSettings,
    FrameStream,
    decode_all,
    normalize,
    open_video,
    resize_crop,
    short_side_size,
)
from tests.videos import (
    TIME_BASE,
    cfr_times,
    code_image,
    read_code,
    vfr_times,
    write_audio_only,
    write_video,
)

RAW = DecodeSettings(short_side=0, crop=0)


def expected_picks(times: list[Fraction]) -> list[int]:
    """Reference rule in integer ticks: for t_k = k/10 s, the last frame with pts <= t_k."""
    ticks = np.array([int(t / TIME_BASE) for t in times], dtype=np.int64)
    per_out = int(TIME_BASE.denominator // 10)
    n_out = int(ticks[-1] // per_out) + 1
    return [int(np.searchsorted(ticks, k * per_out, side="right") - 1) for k in range(n_out)]


@pytest.mark.parametrize("fps", [25, Fraction(30000, 1001), 30, 60])
def test_cfr_sampling_is_frame_exact(tmp_path, fps):
    times = cfr_times(fps, 2 * int(fps) + 3)
    path = write_video(tmp_path / "v.mp4", times)
    frames, res = decode_all(path, RAW)
    picks = [read_code(f.numpy()) for f in frames]
    exp = expected_picks(times)
    assert picks == exp
    assert res.num_frames == len(exp) == frames.shape[0]
    np.testing.assert_allclose(res.chosen_pts, [float(times[i]) for i in exp], atol=1e-9)
    assert res.source_fps == pytest.approx(float(fps), rel=1e-3)
    assert res.duration == pytest.approx(float(times[-1] + 1 / Fraction(fps)), abs=1e-6)


def test_vfr_sampling_is_frame_exact(tmp_path):
    times = vfr_times()
    path = write_video(tmp_path / "vfr.mp4", times)
    frames, res = decode_all(path, RAW)
    picks = [read_code(f.numpy()) for f in frames]
    assert picks == expected_picks(times)
    stats = res.stats()
    assert stats["repeated_source_frames"] > 0  # the 0.7 s gap repeats one source frame
    assert stats["chosen_lag_max"] >= 0.6


def test_frame_on_exact_output_time_is_chosen(tmp_path):
    # 10 fps source: every frame lands exactly on an output time, so output k is frame k, and
    # one frame at t=0 alone still gives one output frame.
    frames, res = decode_all(write_video(tmp_path / "a.mp4", cfr_times(10, 7)), RAW)
    assert [read_code(f.numpy()) for f in frames] == list(range(7))
    frames, res = decode_all(write_video(tmp_path / "b.mp4", cfr_times(10, 1)), RAW)
    assert res.num_frames == 1


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    path = write_video(tmp_path / "r.mp4", cfr_times(10, 3), rotation=rotation)
    frames, res = decode_all(path, RAW)
    assert res.rotation == rotation
    shown = frames[2].numpy()
    assert shown.shape[:2] == ((64, 48) if rotation % 180 else (48, 64))
    # Undo the counter-clockwise display rotation and read the frame number back.
    assert read_code(np.rot90(shown, k=-rotation // 90)) == 2
    upright = code_image(2).astype(int)
    assert np.abs(np.rot90(shown, k=-rotation // 90).astype(int) - upright).mean() < 8


@pytest.mark.parametrize("codec,ext", [("ffv1", "mkv"), ("libx264", "mp4")])
def test_ten_bit_decodes_to_rgb(tmp_path, codec, ext):
    path = write_video(tmp_path / f"t.{ext}", cfr_times(10, 4), codec=codec,
                       pix_fmt="yuv420p10le")
    frames, res = decode_all(path, RAW)
    assert res.pix_fmt == "yuv420p10le"
    assert frames.dtype == torch.uint8 and frames.shape == (4, 48, 64, 3)
    assert [read_code(f.numpy()) for f in frames] == [0, 1, 2, 3]


def bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Slow float64 bilinear with half-pixel centres and edge clamping (align_corners=False)."""
    h, w, c = img.shape
    out = np.zeros((out_h, out_w, c))
    for y in range(out_h):
        sy = max((y + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bot * fy
    return out


@pytest.mark.parametrize("h,w,short,crop", [(30, 50, 20, 16), (50, 30, 24, 0), (17, 23, 40, 33)])
def test_resize_crop_matches_slow_reference(h, w, short, crop):
    img = np.random.default_rng(0).integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    out = resize_crop(torch.from_numpy(img)[None], short, crop)[0].numpy()
    nh, nw = short_side_size(h, w, short)
    assert min(nh, nw) == short and max(nh, nw) == int(np.floor(max(h, w) / min(h, w) * short))
    ref = bilinear_reference(img.astype(np.float64), nh, nw)
    if crop:
        y0, x0 = int(np.ceil((nh - crop) / 2)), int(np.ceil((nw - crop) / 2))
        ref = ref[y0:y0 + crop, x0:x0 + crop]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 0.5 + 1e-3  # only the final rounding to uint8 differs


def test_normalize_layout_and_values():
    frames = torch.randint(0, 256, (5, 8, 6, 3), dtype=torch.uint8)
    x = normalize(frames)
    assert x.shape == (1, 3, 5, 8, 6)
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    ref = (frames.double().permute(3, 0, 1, 2)[None] / 255 - 0.45) / 0.225
    torch.testing.assert_close(x.double(), ref, atol=1e-6, rtol=0)


def test_resize_pipeline_shape(tmp_path):
    path = write_video(tmp_path / "v.mp4", cfr_times(10, 5))
    frames, _ = decode_all(path, DecodeSettings(short_side=32, crop=24))
    assert frames.shape == (5, 24, 24, 3)
    frames, _ = decode_all(path, DecodeSettings(short_side=32, crop=0))
    assert frames.shape == (5, 32, 42, 3)


def test_stream_memory_is_bounded_and_complete(tmp_path):
    path = write_video(tmp_path / "long.mp4", cfr_times(10, 200))
    stream = FrameStream(path, RAW, chunk=8, max_chunks=2).start()
    try:
        for _ in range(200):  # wait (bounded) until the decoder has filled the queue
            if stream._queue.full():
                break
            stream._thread.join(0.02)
        assert stream._queue.qsize() <= 2
        assert stream._thread.is_alive()  # blocked on the full queue, not done decoding
        total = sum(chunk.shape[0] for chunk in stream)
    finally:
        stream.close()
    assert total == 200 == stream.result.num_frames


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(DecodeError, match="missing.mp4: file does not exist"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty.mp4: file is empty \(0 bytes\)"):
        open_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("hello, not a video\n" * 10)
    with pytest.raises(DecodeError, match="text.mp4: not a video FFmpeg can read"):
        open_video(tmp_path / "text.mp4")
    audio = write_audio_only(tmp_path / "tone.wav")
    with pytest.raises(DecodeError, match="tone.wav: no video stream .*audio"):
        open_video(audio)
    good = write_video(tmp_path / "cut.mp4", cfr_times(10, 20))
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DecodeError, match="cut.mp4"):
        decode_all(good, RAW)


def test_corrupt_middle_is_an_error_not_a_short_video(tmp_path):
    # FFmpeg skips the damaged clusters and would return a shorter video; that must fail, in
    # the consuming thread, naming the file.
    path = write_video(tmp_path / "v.mkv", cfr_times(10, 30), codec="ffv1")
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match=r"v.mkv: truncated or corrupt: decoded 0.80 s of the 3"):
        decode_all(path, RAW)
