//! How the pytorch backend cuts a batch of requests into runs and splits outputs back.

use ferrum_pytorch::{row_spans, runs_within};

#[test]
fn runs_stay_within_the_batch_limit() {
    assert_eq!(runs_within(&[1, 2, 3, 2], 4), vec![2, 1, 1]);
    assert_eq!(runs_within(&[4, 4], 8), vec![2]);
    assert_eq!(runs_within(&[9, 1], 8), vec![1, 1]);
    assert_eq!(runs_within(&[1; 5], 2), vec![2, 2, 1]);
    assert!(runs_within(&[], 4).is_empty());
}

#[test]
fn each_request_gets_its_own_rows() {
    // Rows of 8 bytes: requests of 1, 3 and 2 rows.
    assert_eq!(row_spans(48, &[1, 3, 2]), Some(vec![0..8, 8..32, 32..48]));
    assert_eq!(row_spans(0, &[2, 1]), Some(vec![0..0, 0..0]));
    assert_eq!(row_spans(0, &[]), Some(vec![]));
    // Not a whole number of rows.
    assert_eq!(row_spans(50, &[1, 3, 2]), None);
    assert_eq!(row_spans(4, &[]), None);
}
