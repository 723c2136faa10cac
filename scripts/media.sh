#!/usr/bin/env bash
# Generate sample media for tests and the demo with FFmpeg's synthetic sources
# (no downloads): three clips plus an intro and an outro, all 1280x720 25 fps
# H.264 + AAC stereo 44.1 kHz. Existing files are kept, so re-runs are cheap.
# Usage: scripts/media.sh DIR
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR="$1"

LOG_TAG=media
DIE_WORD=""
# DIR is relative to the caller's directory: find lib.sh without changing it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

have ffmpeg || die "ffmpeg not found; run scripts/services.sh"
have ffprobe || die "ffprobe not found; run scripts/services.sh"

mkdir -p "$DIR"

# generate NAME SECONDS VIDEO_SOURCE TONE_HZ
generate() {
    local out="$DIR/$1" secs="$2" src="$3" tone="$4"
    if [ -s "$out" ]; then
        log "kept $out"
        return 0
    fi
    # Encode to a temp name first: an interrupted run must not leave a
    # truncated file that later runs would keep.
    local tmp="$DIR/.$1.partial.mp4"
    # -g 50: a keyframe every 2 s, so segmenting and seeking land predictably.
    ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "${src}=size=1280x720:rate=25" \
        -f lavfi -i "sine=frequency=${tone}:sample_rate=44100" \
        -t "$secs" -shortest \
        -map 0:v:0 -map 1:a:0 \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -g 50 \
        -c:a aac -b:a 128k -ar 44100 -ac 2 \
        -movflags +faststart \
        "$tmp"
    mv -f "$tmp" "$out"
    log "made $out"
}

generate clip1.mp4 12 testsrc2 440
generate clip2.mp4 20 testsrc2 440
generate clip3.mp4 30 testsrc2 440
generate intro.mp4 3 smptebars 880
generate outro.mp4 3 rgbtestsrc 660

# Show what is there: duration, streams and size of each file.
for f in clip1.mp4 clip2.mp4 clip3.mp4 intro.mp4 outro.mp4; do
    path="$DIR/$f"
    dur="$(ffprobe -v error -show_entries format=duration -of default=noprint_wrappers=1:nokey=1 "$path")"
    streams="$(ffprobe -v error -show_entries stream=codec_name -of csv=p=0 "$path" | paste -sd+ -)"
    size="$(wc -c <"$path")"
    # Text, not %f: printf's %f would follow the caller's decimal separator.
    log "$(printf '%-10s %8s s  %-9s %10s bytes' "$f" "${dur%????}" "$streams" "$size")"
done
