// Helpers for the reliability tests: the reliability_worker child process, a private PostgreSQL
// server, and the exactly-once check over `jobs` and `reliability_completions`.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store/database.h"

extern char** environ;

namespace megaserve::reliability {

using namespace std::chrono_literals;

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream f(path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The last `n` bytes of a log file, for failure messages.
inline std::string Tail(const std::filesystem::path& path, size_t n = 4000) {
  std::string text = ReadFile(path);
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

// One run of the reliability_worker binary (RELIABILITY_WORKER). Its stdout goes to a file of its
// own in `log_dir`, its stderr is appended to log_dir/worker.err. The destructor SIGKILLs it if
// it is still running.
class WorkerProcess {
 public:
  WorkerProcess(const std::filesystem::path& log_dir, const std::vector<std::string>& args) {
    static int counter = 0;
    stdout_path_ = log_dir / ("worker_" + std::to_string(++counter) + ".out");
    const std::string err_path = (log_dir / "worker.err").string();
    const char* bin = std::getenv("RELIABILITY_WORKER");
    std::vector<std::string> argv_strings = {bin ? bin : "reliability_worker"};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, stdout_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    const int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      ADD_FAILURE() << "spawning " << argv[0] << ": " << std::strerror(rc);
      pid_ = -1;
    }
  }
  ~WorkerProcess() { Kill(); }
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The lease owner its claims carry.
  std::string lease_owner() const { return "reliability:" + std::to_string(pid_); }

  // Waits until it prints "ready"; false when it exits first or `timeout` passes.
  bool WaitReady(std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
      if (ReadFile(stdout_path_).find("ready\n") != std::string::npos) return true;
      if (Reap(WNOHANG)) return false;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  // SIGKILL, then reaps it.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    Reap(0);
  }

  // SIGTERM, then waits up to `timeout` for it to exit (SIGKILL after that). Returns its exit
  // code, or -1 when it had to be killed or was not running.
  int Terminate(std::chrono::milliseconds timeout = 10s) {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (Reap(WNOHANG)) return exit_code_;
      std::this_thread::sleep_for(10ms);
    }
    Kill();
    return -1;
  }

 private:
  // Collects the exit status; true once the process is gone.
  bool Reap(int flags) {
    int status = 0;
    if (waitpid(pid_, &status, flags) != pid_) return false;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    pid_ = -1;
    return true;
  }

  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::filesystem::path stdout_path_;
};

// The source tree: MEGASERVE_SOURCE_DIR, else the tree this file was compiled from.
inline std::filesystem::path SourceDir() {
  if (const char* dir = std::getenv("MEGASERVE_SOURCE_DIR"); dir && *dir) return dir;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

// Runs a bash script with scripts/lib/throwaway.sh sourced and `arg` as $1; returns its stdout,
// or nullopt (with a test failure) when it exits non-zero.
inline std::optional<std::string> RunThrowawayScript(const std::string& script,
                                                     const std::string& arg) {
  const std::filesystem::path source_dir = SourceDir();
  if (!std::filesystem::exists(source_dir / "scripts/lib/throwaway.sh")) {
    ADD_FAILURE() << "no scripts/lib/throwaway.sh under " << source_dir
                  << "; set MEGASERVE_SOURCE_DIR";
    return std::nullopt;
  }
  // Single quotes keep the arguments literal; neither path holds a quote.
  const std::string command = "bash -c 'set -e; source \"$0\"/scripts/lib/throwaway.sh; " + script +
                              "' '" + source_dir.string() + "' '" + arg + "' 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    ADD_FAILURE() << "popen: " << std::strerror(errno);
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0) {
    ADD_FAILURE() << "`" << script << "` failed (status " << status << "):\n" << out;
    return std::nullopt;
  }
  return out;
}

// A PostgreSQL server of this test's own in `dir` (scripts/lib/throwaway.sh), so the test may
// restart it without disturbing the shared test server. Stopped on destruction.
class PrivatePostgres {
 public:
  // Starts the server; url() is "" when that failed (reported as a test failure).
  explicit PrivatePostgres(std::filesystem::path dir) : dir_(std::move(dir)) {
    auto out = RunThrowawayScript("pg_start \"$1\" reliability fsync=off; echo \"$pg_url\"",
                                  dir_.string());
    if (!out) return;
    std::string url = *out;
    while (!url.empty() && (url.back() == '\n' || url.back() == ' ')) url.pop_back();
    url = url.substr(url.find_last_of('\n') + 1);  // the script's last line
    if (url.rfind("postgresql://", 0) != 0) {
      ADD_FAILURE() << "pg_start printed no URL:\n" << *out;
      return;
    }
    url_ = url;
  }
  ~PrivatePostgres() { RunThrowawayScript("pg_stop \"$1\"", dir_.string()); }
  PrivatePostgres(const PrivatePostgres&) = delete;
  PrivatePostgres& operator=(const PrivatePostgres&) = delete;

  const std::string& url() const { return url_; }

  // `pg_ctl restart -m fast`: every session is terminated, the server stops cleanly and starts
  // again on the same port. Blocks until it accepts connections again.
  bool Restart() {
    return RunThrowawayScript(
               "_as_pg \"$(_pg_bin)/pg_ctl\" -D \"$1/pg\" -l \"$1/pg.log\" -m fast -w restart",
               dir_.string())
        .has_value();
  }

  // The server's log.
  std::string Log() const { return Tail(dir_ / "pg.log"); }

 private:
  std::filesystem::path dir_;
  std::string url_;
};

// Reads one integer; -1 (with a test failure) on error.
inline int64_t QueryInt(store::Database& db, const std::string& sql, const store::Params& params) {
  auto rows = db.Execute(sql, params);
  if (!rows.ok() || rows->empty()) {
    ADD_FAILURE() << sql << ": " << rows.status().ToString();
    return -1;
  }
  return rows->GetInt(0, 0);
}

// Polls until `n` jobs of `queue` have succeeded or `deadline` passes; returns how many have.
// Failing polls (e.g. while the server restarts) are retried.
inline int64_t WaitSucceeded(store::Database& db, const std::string& queue, int64_t n,
                             std::chrono::steady_clock::time_point deadline) {
  int64_t done = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto rows =
        db.Execute("SELECT count(*) FROM jobs WHERE queue = $1 AND status = 'succeeded'", {queue});
    if (rows.ok()) done = rows->GetInt(0, 0);
    if (done >= n) break;
    std::this_thread::sleep_for(100ms);
  }
  return done;
}

// What the exactly-once check found.
struct Outcome {
  int64_t jobs = 0;               // jobs in the queue
  int64_t succeeded = 0;          // of them, succeeded
  int64_t completions = 0;        // rows in reliability_completions
  int64_t distinct_jobs = 0;      // distinct job_ids among them
  int64_t matching = 0;           // rows of a succeeded job of the queue with its final token
  int64_t attempts = 0;           // sum of attempts over the queue's jobs
  std::string duplicates_sample;  // a few job_ids with more than one row
  std::string missing_sample;     // a few jobs with no row
};

inline Outcome Inspect(store::Database& db, const std::string& queue) {
  Outcome o;
  const store::Params q = {queue};
  o.jobs = QueryInt(db, "SELECT count(*) FROM jobs WHERE queue = $1", q);
  o.succeeded =
      QueryInt(db, "SELECT count(*) FROM jobs WHERE queue = $1 AND status = 'succeeded'", q);
  o.completions = QueryInt(db, "SELECT count(*) FROM reliability_completions", {});
  o.distinct_jobs = QueryInt(db, "SELECT count(DISTINCT job_id) FROM reliability_completions", {});
  o.matching = QueryInt(db,
                        "SELECT count(*) FROM reliability_completions c JOIN jobs j ON j.id = "
                        "c.job_id WHERE j.queue = $1 AND j.status = 'succeeded' AND "
                        "c.fencing_token = j.fencing_token",
                        q);
  o.attempts = QueryInt(db, "SELECT COALESCE(sum(attempts), 0) FROM jobs WHERE queue = $1", q);
  auto dups = db.Execute(
      "SELECT job_id, count(*) FROM reliability_completions GROUP BY job_id HAVING count(*) > 1 "
      "ORDER BY job_id LIMIT 5");
  if (dups.ok()) {
    for (size_t i = 0; i < dups->size(); ++i) {
      o.duplicates_sample += dups->GetText(i, 0) + " x" + dups->GetText(i, 1) + " ";
    }
  }
  auto missing = db.Execute(
      "SELECT j.id, j.status, j.attempts FROM jobs j LEFT JOIN reliability_completions c ON "
      "c.job_id = j.id WHERE j.queue = $1 AND c.job_id IS NULL ORDER BY j.id LIMIT 5",
      q);
  if (missing.ok()) {
    for (size_t i = 0; i < missing->size(); ++i) {
      o.missing_sample += missing->GetText(i, 0) + " (" + missing->GetText(i, 1) + ", " +
                          missing->GetText(i, 2) + " attempts) ";
    }
  }
  return o;
}

// Asserts that each of the `n` jobs of `queue` succeeded and left exactly one completion row,
// written under the job's final fencing token, and that no other row exists.
inline void ExpectExactlyOnce(const Outcome& o, int64_t n) {
  EXPECT_EQ(o.jobs, n);
  EXPECT_EQ(o.succeeded, n) << "jobs without a completion: " << o.missing_sample;
  EXPECT_EQ(o.completions, n) << "duplicated: " << o.duplicates_sample
                              << "; missing: " << o.missing_sample;
  EXPECT_EQ(o.distinct_jobs, n) << "missing: " << o.missing_sample;
  EXPECT_EQ(o.matching, n) << "completion rows not matching a succeeded job and its final token";
}

}  // namespace megaserve::reliability
