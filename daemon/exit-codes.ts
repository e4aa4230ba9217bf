/** Process exit codes of the strata CLI. */
export const EXIT = {
  OK: 0,
  /** A generic, unexpected failure. */
  FAILURE: 1,
  /** Bad command-line usage. */
  USAGE: 2,
  /** The data directory is missing, foreign or of an unsupported format. */
  DATA_DIR: 3,
  /** The token refused the PIN, or the PIN is missing or locked. */
  PIN: 4,
  /** The PKCS#11 module or token is missing or failing. */
  TOKEN: 5,
  /** Team access is disabled or destroyed. */
  TEAM: 6,
  /** fsck found problems. */
  FSCK_PROBLEMS: 7,
  /** Stored data failed verification. */
  INTEGRITY: 8,
  /** The mount failed: mount point missing or busy, volume in use, FUSE missing. */
  MOUNT: 9,
  /** No Strata drive is mounted there. */
  NOT_MOUNTED: 10,
  /** The mount point is busy (files are open); nothing was changed. */
  BUSY: 11
} as const
