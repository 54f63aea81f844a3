"""Kernel selftests run against the model.

Models: tools/testing/selftests/ @ torvalds/linux 0eaed89c18ae. `harness`
is a small kselftest_harness.h (fixtures, variants, TEST_F, ASSERT_*, TAP);
`hmm_tests` ports tools/testing/selftests/mm/hmm-tests.c case for case;
`gup_test` models the mm/gup_test.c debugfs device those tests use. The
`hmmsim selftest` command runs them.
"""
