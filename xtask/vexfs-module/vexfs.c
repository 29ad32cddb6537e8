// SPDX-License-Identifier: GPL-2.0
/*
 * vexfs: a small in-memory file system whose operations carry the names of VexFS's kernel
 * module (vexfs_create, vexfs_mkdir, vexfs_unlink, vexfs_rmdir, vexfs_rename, vexfs_file_write)
 * and two vector operations: a write to a "*.vec" file stores a vector (vexfs_vector_insert),
 * a write to a "*.search" file searches (vexfs_knn_search); a vector is comma-separated
 * numbers, its dimensions the number of them. Built by `cargo xtask vm-test` against Debian's
 * 6.1 headers, loaded in the VM, followed by vexevent through `[[kernel_functions]]`.
 * The operations are global and noinline so that each has a symbol of its own name.
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define VEXFS_MAGIC 0x56455846 /* "VEXF" */
/* The most bytes of a write that are parsed as a vector. */
#define VEXFS_VECTOR_BYTES 256

int vexfs_create(struct user_namespace *userns, struct inode *dir, struct dentry *dentry,
		 umode_t mode, bool excl);
int vexfs_mkdir(struct user_namespace *userns, struct inode *dir, struct dentry *dentry,
		umode_t mode);
int vexfs_unlink(struct inode *dir, struct dentry *dentry);
int vexfs_rmdir(struct inode *dir, struct dentry *dentry);
int vexfs_rename(struct user_namespace *userns, struct inode *old_dir, struct dentry *old_dentry,
		 struct inode *new_dir, struct dentry *new_dentry, unsigned int flags);
ssize_t vexfs_file_write(struct file *file, const char __user *buf, size_t count, loff_t *pos);
int vexfs_vector_insert(struct file *file, u32 dimensions);
int vexfs_knn_search(struct file *file, u32 dimensions);

/* Vectors stored since the module was loaded. */
static atomic_t vexfs_vectors = ATOMIC_INIT(0);

static const struct inode_operations vexfs_dir_inode_operations;

static const struct file_operations vexfs_file_operations = {
	.write = vexfs_file_write,
	.llseek = noop_llseek,
};

static struct inode *vexfs_new_inode(struct super_block *sb, const struct inode *dir, umode_t mode)
{
	struct inode *inode = new_inode(sb);

	if (!inode)
		return NULL;
	inode->i_ino = get_next_ino();
	inode_init_owner(&init_user_ns, inode, dir, mode);
	inode->i_atime = inode->i_mtime = inode->i_ctime = current_time(inode);
	if (S_ISDIR(mode)) {
		inode->i_op = &vexfs_dir_inode_operations;
		inode->i_fop = &simple_dir_operations;
		inc_nlink(inode);
	} else {
		inode->i_fop = &vexfs_file_operations;
	}
	return inode;
}

/* A new inode for dentry in dir; the dentry is pinned (the file system has no other store). */
static int vexfs_instantiate(struct inode *dir, struct dentry *dentry, umode_t mode)
{
	struct inode *inode = vexfs_new_inode(dir->i_sb, dir, mode);

	if (!inode)
		return -ENOSPC;
	d_instantiate(dentry, inode);
	dget(dentry);
	dir->i_mtime = dir->i_ctime = current_time(dir);
	return 0;
}

noinline int vexfs_create(struct user_namespace *userns, struct inode *dir, struct dentry *dentry,
			  umode_t mode, bool excl)
{
	return vexfs_instantiate(dir, dentry, (mode & ~S_IFMT) | S_IFREG);
}

noinline int vexfs_mkdir(struct user_namespace *userns, struct inode *dir, struct dentry *dentry,
			 umode_t mode)
{
	int error = vexfs_instantiate(dir, dentry, (mode & ~S_IFMT) | S_IFDIR);

	if (!error)
		inc_nlink(dir);
	return error;
}

noinline int vexfs_unlink(struct inode *dir, struct dentry *dentry)
{
	return simple_unlink(dir, dentry);
}

noinline int vexfs_rmdir(struct inode *dir, struct dentry *dentry)
{
	return simple_rmdir(dir, dentry);
}

noinline int vexfs_rename(struct user_namespace *userns, struct inode *old_dir,
			  struct dentry *old_dentry, struct inode *new_dir, struct dentry *new_dentry,
			  unsigned int flags)
{
	return simple_rename(userns, old_dir, old_dentry, new_dir, new_dentry, flags);
}

/* Stores a vector of `dimensions` numbers (here: counts it). */
noinline int vexfs_vector_insert(struct file *file, u32 dimensions)
{
	if (dimensions == 0)
		return -EINVAL;
	atomic_inc(&vexfs_vectors);
	return 0;
}

/* Searches the stored vectors for the nearest to a query of `dimensions` numbers; returns how
 * many were found (here: every stored vector). */
noinline int vexfs_knn_search(struct file *file, u32 dimensions)
{
	if (dimensions == 0)
		return -EINVAL;
	return atomic_read(&vexfs_vectors);
}

static bool vexfs_name_ends(struct file *file, const char *suffix)
{
	const char *name = file->f_path.dentry->d_name.name;
	size_t length = strlen(name), suffix_length = strlen(suffix);

	return length > suffix_length && !strcmp(name + length - suffix_length, suffix);
}

noinline ssize_t vexfs_file_write(struct file *file, const char __user *buf, size_t count,
				  loff_t *pos)
{
	char vector[VEXFS_VECTOR_BYTES];
	size_t length = min_t(size_t, count, sizeof(vector));
	u32 dimensions = 0;
	size_t at;
	int error = 0;

	if (copy_from_user(vector, buf, length))
		return -EFAULT;
	for (at = 0; at < length; at++) {
		bool digit = vector[at] >= '0' && vector[at] <= '9';

		if (digit && (at == 0 || vector[at - 1] == ',' || vector[at - 1] == ' '))
			dimensions++;
	}
	if (vexfs_name_ends(file, ".vec"))
		error = vexfs_vector_insert(file, dimensions);
	else if (vexfs_name_ends(file, ".search"))
		error = vexfs_knn_search(file, dimensions);
	if (error < 0)
		return error;
	*pos += count;
	i_size_write(file_inode(file), *pos);
	return count;
}

static const struct inode_operations vexfs_dir_inode_operations = {
	.lookup = simple_lookup,
	.create = vexfs_create,
	.mkdir = vexfs_mkdir,
	.unlink = vexfs_unlink,
	.rmdir = vexfs_rmdir,
	.rename = vexfs_rename,
};

static const struct super_operations vexfs_super_operations = {
	.statfs = simple_statfs,
	.drop_inode = generic_delete_inode,
};

static int vexfs_fill_super(struct super_block *sb, void *data, int silent)
{
	struct inode *root;

	sb->s_magic = VEXFS_MAGIC;
	sb->s_op = &vexfs_super_operations;
	sb->s_time_gran = 1;
	root = vexfs_new_inode(sb, NULL, S_IFDIR | 0755);
	sb->s_root = d_make_root(root);
	return sb->s_root ? 0 : -ENOMEM;
}

static struct dentry *vexfs_mount(struct file_system_type *type, int flags, const char *device,
				  void *data)
{
	return mount_nodev(type, flags, data, vexfs_fill_super);
}

static struct file_system_type vexfs_type = {
	.owner = THIS_MODULE,
	.name = "vexfs",
	.mount = vexfs_mount,
	.kill_sb = kill_litter_super,
};

static int __init vexfs_init(void)
{
	return register_filesystem(&vexfs_type);
}

static void __exit vexfs_exit(void)
{
	unregister_filesystem(&vexfs_type);
}

module_init(vexfs_init);
module_exit(vexfs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("VexFS's kernel function names on a small in-memory file system (vexevent's VM test)");
