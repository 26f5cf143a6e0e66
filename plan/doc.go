// Package plan defines backup plans (what, where, when, how, how long), their validation, and the Store that keeps them.
package plan
