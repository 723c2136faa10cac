use super::*;

/// `n` frames at 25 fps from `start`, with keyframes at `keys`.
fn frames(n: usize, start: f64, keys: &[usize]) -> Frames {
    Frames {
        times: (0..n).map(|i| start + i as f64 * 0.04).collect(),
        keyframes: keys.to_vec(),
        start,
    }
}

fn rule(chunk_secs: f64) -> Chunking {
    Chunking {
        chunk_secs,
        scenes: None,
        filter: None,
        video: vec!["-c:v".into(), "libx264".into()],
        audio: default_audio(),
        output: default_output(),
    }
}

#[test]
fn a_listing_gives_frames_in_presentation_order_with_their_keyframes() {
    let listing = "packet|pts_time=0.000000|flags=K__\n\
                   packet|pts_time=0.120000|flags=___\n\
                   packet|pts_time=0.040000|flags=___\n\
                   packet|pts_time=0.080000|flags=K__\n\
                   format|start_time=0.000000\n";
    let f = Frames::parse(listing).unwrap();
    assert_eq!(f.times, vec![0.0, 0.04, 0.08, 0.12]);
    assert_eq!(f.keyframes, vec![0, 2]);
    assert!((f.frame_secs() - 0.04).abs() < 1e-9);
    assert!(Frames::parse("format|start_time=0\n").is_err());
}

#[test]
fn a_single_keyframe_source_is_cut_at_exact_frames() {
    // 16 s, one keyframe: every cut is a decoded frame, every chunk 4 s.
    let f = frames(400, 0.0, &[0]);
    let starts = cuts(&f, &rule(4.0), &[]);
    assert_eq!(starts, vec![0, 100, 200, 300]);
    let p = plan(&f, &starts, true);
    assert_eq!(p.frames, 400);
    assert_eq!(p.chunks.iter().map(|c| c.frames).sum::<u64>(), 400);
    assert!(!p.chunks[1].at_keyframe);
    // The seek falls between frame 99 (3.96 s) and frame 100 (4.00 s).
    assert!((p.chunks[1].seek - 3.98).abs() < 1e-9);
    assert_eq!(p.chunks[0].seek, 0.0);
    assert!((p.video_secs - 16.0).abs() < 1e-9);
}

#[test]
fn cuts_move_to_a_keyframe_near_the_target() {
    // Keyframes every 2.2 s: the 4 s target moves to 4.4 s, within a quarter.
    let keys: Vec<usize> = (0..400).step_by(55).collect();
    let f = frames(400, 0.0, &keys);
    let starts = cuts(&f, &rule(4.0), &[]);
    assert_eq!(starts[1], 110);
    assert!(starts.iter().all(|s| keys.contains(s)), "{starts:?}");
    let p = plan(&f, &starts, false);
    assert!(p.chunks.iter().all(|c| c.at_keyframe));
}

#[test]
fn a_short_remainder_joins_the_chunk_before_it() {
    // 9 s in 4 s chunks: 4 + 5, not 4 + 4 + 1.
    let f = frames(225, 0.0, &[0]);
    let starts = cuts(&f, &rule(4.0), &[]);
    assert_eq!(starts, vec![0, 100]);
    assert_eq!(plan(&f, &starts, false).chunks[1].frames, 125);
}

#[test]
fn scene_cuts_are_taken_within_the_window_and_max_cuts_without_one() {
    let f = frames(1000, 0.0, &[0]); // 40 s
    let scenes = Scenes {
        min_secs: 4.0,
        max_secs: 12.0,
        threshold: 10.0,
    };
    let rule = Chunking {
        scenes: Some(scenes),
        ..rule(60.0)
    };
    // Scene changes at 3 s (too soon), 7 s and 9.6 s (7 is nearer the middle, 8 s),
    // then none until 30 s: the window 11..19 has none, so that chunk ends at 19 s.
    let starts = cuts(&f, &rule, &[75, 175, 240, 750]);
    assert_eq!(starts, vec![0, 175, 475, 750]);
    let p = plan(&f, &starts, false);
    assert!(p.chunks.iter().all(|c| c.secs <= 12.0 + 1e-9));
}

#[test]
fn the_seek_counts_from_the_file_start() {
    // An MPEG-TS source starting at 1.4 s: the seek is relative to the start.
    let f = frames(200, 1.4, &[0]);
    let starts = cuts(&f, &rule(4.0), &[]);
    let p = plan(&f, &starts, false);
    assert!(
        (p.chunks[1].seek - 3.98).abs() < 1e-9,
        "{}",
        p.chunks[1].seek
    );
}

#[test]
fn scdet_lines_name_frames() {
    let f = frames(100, 0.0, &[0]);
    let line = "[scdet @ 0x55] lavfi.scd.score: 45.100, lavfi.scd.time: 2.04";
    assert_eq!(scene_cut(line, &f), Some(51));
    assert_eq!(scene_cut("frame=  1 fps=0.0", &f), None);
}

#[test]
fn the_digest_follows_the_frames_and_their_order() {
    let a = "#tb 0: 1/25\n0, 0, 0, 1, 460800, aaa\n0, 1, 1, 1, 460800, bbb\n";
    let b = "0, 0, 0, 1, 460800, bbb\n0, 1, 1, 1, 460800, aaa\n";
    assert_eq!(frame_md5s(a), vec!["aaa", "bbb"]);
    assert_ne!(digest(&frame_md5s(a)), digest(&frame_md5s(b)));
    assert_eq!(digest(&["aaa", "bbb"]), digest(&frame_md5s(a)));
}

#[test]
fn settings_are_checked_by_key() {
    assert!(rule(60.0).validate().is_ok());
    assert!(rule(0.5).validate().unwrap_err().contains("chunk_secs"));
    let bad = Chunking {
        scenes: Some(Scenes {
            min_secs: 10.0,
            max_secs: 12.0,
            threshold: 10.0,
        }),
        ..rule(60.0)
    };
    assert!(bad.validate().unwrap_err().contains("chunked.scenes"));
    let no_video = Chunking {
        video: vec![],
        ..rule(60.0)
    };
    assert!(no_video.validate().unwrap_err().contains("chunked.video"));
}
