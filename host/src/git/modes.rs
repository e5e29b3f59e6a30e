//! Checkouts others can read: `group_write` gives DIR's group what its
//! owner has (read and write, and execute where the owner has it), as
//! git-sync's `--group-write` does, whatever the process's umask (a
//! systemd unit's `UMask=0077` would otherwise leave every file 0600).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Gives the group read and write on everything under `dir` (and `dir`),
/// and execute where the owner has it; symlinks are left as they are (a
/// mode change would follow them out). Only files that lack it are
/// changed.
pub fn share_with_group(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let owner_x = mode & 0o100 != 0;
    let wanted = mode | 0o060 | if owner_x { 0o010 } else { 0 };
    if wanted != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            share_with_group(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_gets_what_the_owner_has_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), "x").unwrap();
        fs::write(d.join("run"), "x").unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "x").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        set(&d, 0o700);
        set(&d.join("f"), 0o600);
        set(&d.join("run"), 0o700);
        set(&outside, 0o600);
        share_with_group(&d).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o770);
        assert_eq!(mode(&d.join("f")), 0o660);
        assert_eq!(mode(&d.join("run")), 0o770);
        assert_eq!(mode(&outside), 0o600, "not followed through the link");
    }
}
