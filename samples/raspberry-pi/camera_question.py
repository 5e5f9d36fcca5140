"""Ask a bundle about what the camera sees (or the microphone hears), on the board itself.

Needs only the runtime install (`pip install edgemfm`: no torch) and a bundle exported on a host
and copied over. The picture comes from picamera2 (the Pi's camera connector), else from OpenCV
(a USB camera, or a Jetson's CSI camera through GStreamer), else from --image.

    python camera_question.py default-pi5 "What is in front of the camera?"
    python camera_question.py default-pi5 "What is in the picture?" --image photo.jpg
    python camera_question.py default-jetson "What is in front of the camera?" --device jetson
    python camera_question.py BUNDLE "What was said?" --mic 5       # bundles with an audio encoder

picamera2 comes with Raspberry Pi OS (`sudo apt install python3-picamera2`; make the venv with
--system-site-packages to see it); OpenCV is `pip install opencv-python-headless`; the
microphone needs `pip install sounddevice` (and `sudo apt install libportaudio2`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import wave
from pathlib import Path

import edgemfm
from edgemfm.errors import EdgemfmError


def camera_frame(camera: int):
    """One RGB frame (a Pillow image or an HxWx3 uint8 array), or None when no camera library is here."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        pass
    else:
        cam = Picamera2(camera)
        try:
            cam.configure(cam.create_still_configuration(main={"size": (640, 480)}))
            cam.start()
            time.sleep(1)  # let exposure and white balance settle
            return cam.capture_image("main").convert("RGB")
        finally:
            cam.close()
    try:
        import cv2
    except ImportError:
        return None
    cap = cv2.VideoCapture(camera)
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        sys.exit(f"camera {camera}: OpenCV could not read a frame (is it connected? try --camera 1)")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # OpenCV's frames are BGR


def microphone_chunk(seconds: float, rate: int = 16_000) -> Path:
    """Record `seconds` of mono 16-bit audio into a temporary WAV file."""
    try:
        import sounddevice
    except ImportError:
        sys.exit("--mic needs sounddevice: pip install sounddevice (and sudo apt install libportaudio2)")
    print(f"recording {seconds:g} s ...", file=sys.stderr)
    samples = sounddevice.rec(int(seconds * rate), samplerate=rate, channels=1, dtype="int16")
    sounddevice.wait()
    path = Path(tempfile.mkstemp(suffix=".wav")[1])
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="bundle directory copied from the host")
    p.add_argument("prompt")
    p.add_argument("--device", default="pi5", help="profile whose execution providers to use: pi5, jetson ...")
    p.add_argument("--image", help="a picture file instead of the camera")
    p.add_argument("--camera", type=int, default=0, help="camera index (default 0)")
    p.add_argument("--mic", type=float, metavar="SECONDS", help="ask about a microphone chunk instead of a picture")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args()

    images, audio = [], []
    if args.mic:
        audio.append(str(microphone_chunk(args.mic)))
    else:
        frame = args.image or camera_frame(args.camera)
        if frame is None:
            sys.exit("no camera library (picamera2, OpenCV) here: pass --image FILE")
        images.append(frame)
    try:
        pipe = edgemfm.load(args.bundle, device=args.device)
        print(f"{pipe.profile.name}: {pipe.provider}", file=sys.stderr)
        start = time.perf_counter()
        for piece in pipe.generate(args.prompt, images=images, audio=audio, max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
        print()
        print(f"answered in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    except EdgemfmError as e:  # a missing or tampered bundle, an input the bundle does not take
        print(f"edgemfm: error: {e}", file=sys.stderr)
        return 2
    finally:
        for path in audio:
            Path(path).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
